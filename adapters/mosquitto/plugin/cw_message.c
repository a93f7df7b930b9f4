/* certwarden Mosquitto plugin: device requests (MESSAGE) and certwarden's replies (PUBLISHES).
 *
 * Only three topic shapes are forwarded (cw_request_topic); every other rule, the decision
 * to answer and the reply topic included, lives in certwarden. Mosquitto raises
 * MOSQ_EVT_MESSAGE after the PUBLISH passed the WRITE ACL check, so only authorized requests
 * get here. Invariants: the handler always returns MOSQ_ERR_SUCCESS (2.0.11 disconnects the
 * publisher on any other code; the request is delivered to its subscribers as usual), a
 * request that does not fit one frame is not forwarded, and a reply is published only after
 * the whole PUBLISHES body parsed exactly.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "cw.h"

#define CW_REQUEST_LEVELS 6u /* the longest forwarded shape */

static bool level_is(const char *p, size_t n, const char *word)
{
	size_t w = strlen(word);
	return n == w && !memcmp(p, word, w);
}

bool cw_request_topic(const char *topic, size_t len)
{
	const char *level[CW_REQUEST_LEVELS];
	size_t level_len[CW_REQUEST_LEVELS];
	const char *s = topic, *end = topic + len;
	size_t n = 0;

	if(len == 0 || topic[0] == '$') return false;
	for(;;){
		const char *slash = memchr(s, '/', (size_t)(end - s));
		if(n == CW_REQUEST_LEVELS) return false; /* more levels than any shape */
		level[n] = s;
		level_len[n] = slash ? (size_t)(slash - s) : (size_t)(end - s);
		n++;
		if(!slash) break;
		s = slash + 1;
	}
	if(n == 5){ /* manage/cert/myorg/cid/+ */
		return level_is(level[0], level_len[0], "manage") && level_is(level[1], level_len[1], "cert")
				&& level_is(level[2], level_len[2], "myorg") && level_is(level[3], level_len[3], "cid");
	}
	if(n == 6){ /* +/manage/cert/register/cid/+ and +/manage/cert/unregister/cid/+ */
		return level_is(level[1], level_len[1], "manage") && level_is(level[2], level_len[2], "cert")
				&& (level_is(level[3], level_len[3], "register")
					|| level_is(level[3], level_len[3], "unregister"))
				&& level_is(level[4], level_len[4], "cid");
	}
	return false;
}

/* One PUBLISHES entry; the pointers reference the link's receive buffer. */
struct cw_reply {
	const uint8_t *topic;
	size_t topic_len;
	const uint8_t *payload;
	uint32_t payload_len;
	const uint8_t *corr;
	uint16_t corr_len;
	uint8_t qos;
};

/* PUBLISHES body: u16 n | n x (str topic | u8 qos | u32-len payload | u16-len correlation).
 * 0 with *count set when well formed. */
static int parse_publishes(struct cw_reader *r, struct cw_reply *out, size_t *count)
{
	size_t n = cw_get_u16(r);

	if(n > CW_MAX_PUBLISHES) return -1;
	for(size_t i = 0; i < n && !r->bad; i++){
		out[i].topic = cw_get_str(r, CW_MAX_TOPIC, &out[i].topic_len);
		out[i].qos = cw_get_u8(r);
		out[i].payload_len = cw_get_u32(r);
		out[i].payload = cw_get_raw(r, out[i].payload_len);
		out[i].corr_len = cw_get_u16(r);
		out[i].corr = cw_get_raw(r, out[i].corr_len);
		if(out[i].qos > 2 || out[i].topic_len == 0) return -1;
	}
	if(r->bad || r->pos != r->len) return -1;
	*count = n;
	return 0;
}

static void publish_reply(const struct cw_reply *reply)
{
	mosquitto_property *props = NULL;
	char *topic = malloc(reply->topic_len + 1);

	if(!topic) return;
	memcpy(topic, reply->topic, reply->topic_len);
	topic[reply->topic_len] = '\0';
	/* The server sends only topic names; a filter or bad UTF-8 would reach the broker's
	 * routing unchecked (mosquitto_broker_publish does not validate), so drop it here. An
	 * empty topic passes mosquitto_pub_topic_check2 and crashed 2.0.11 in a test: refuse it. */
	if(reply->topic_len == 0 || memchr(topic, '\0', reply->topic_len) /* <= CW_MAX_TOPIC */
			|| mosquitto_validate_utf8(topic, (int)reply->topic_len) != MOSQ_ERR_SUCCESS
			|| mosquitto_pub_topic_check2(topic, reply->topic_len) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "certwarden: reply to an invalid topic dropped");
		free(topic);
		return;
	}
	if(reply->corr_len > 0 && mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA,
			reply->corr, reply->corr_len) != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
		free(topic);
		return;
	}
	/* clientid NULL: to every subscriber; Mosquitto still runs the READ check for each. The
	 * broker owns props only on success. */
	if(mosquitto_broker_publish_copy(NULL, topic, (int)reply->payload_len, reply->payload,
			reply->qos, false, props) != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
		mosquitto_log_printf(MOSQ_LOG_WARNING, "certwarden: could not publish a reply on %s", topic);
	}
	free(topic);
}

/* MESSAGE body after the type byte; false when a field is over its limit or the frame is full. */
static bool put_request(struct cw_buf *b, const struct cw_client *c,
		const struct mosquitto_evt_message *ed, size_t topic_len)
{
	char *response = NULL;
	void *corr = NULL;
	uint16_t corr_len = 0;
	size_t response_len = 0;
	bool ok;

	if(ed->payloadlen > CW_MAX_FRAME) return false;
	/* Both come as copies (MQTT 5 only; NULL properties for 3.1.1 clients). */
	mosquitto_property_read_string(ed->properties, MQTT_PROP_RESPONSE_TOPIC, &response, false);
	mosquitto_property_read_binary(ed->properties, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len,
			false);
	if(response) response_len = strlen(response);
	cw_put_raw(b, c->fp, CW_FP_LEN);
	cw_put_str(b, c->id, c->id_len, CW_MAX_CLIENT_ID);
	cw_put_str(b, c->peer, strlen(c->peer), CW_MAX_PEER);
	cw_put_str(b, ed->topic, topic_len, CW_MAX_TOPIC);
	cw_put_u32(b, ed->payloadlen);
	cw_put_raw(b, ed->payload, ed->payloadlen);
	cw_put_str(b, response ? response : "", response_len, CW_MAX_TOPIC);
	cw_put_u16(b, corr ? corr_len : 0);
	if(corr) cw_put_raw(b, corr, corr_len);
	/* certwarden closes the link on invalid UTF-8: never let a client's bytes cause that. */
	ok = !b->overflow && (response_len == 0
			|| mosquitto_validate_utf8(response, (int)response_len) == MOSQ_ERR_SUCCESS);
	free(response);
	free(corr);
	return ok;
}

int cw_on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct cw_plugin *p = userdata;
	struct cw_reply replies[CW_MAX_PUBLISHES];
	struct cw_client *c;
	struct cw_buf b;
	struct cw_reader r;
	size_t topic_len, n = 0;
	int rc;

	(void)event;
	if(!ed->topic) return MOSQ_ERR_SUCCESS;
	topic_len = strlen(ed->topic);
	if(!cw_request_topic(ed->topic, topic_len)) return MOSQ_ERR_SUCCESS;
	c = cw_client_find(&p->table, ed->client, mosquitto_client_id(ed->client));
	if(!c || !c->online) return MOSQ_ERR_SUCCESS;
	b = cw_link_begin(&p->link, CW_MSG_MESSAGE);
	if(!put_request(&b, c, ed, topic_len)){
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"certwarden: request of %s on %s (%u bytes) not forwarded: over the frame limit",
				c->id, ed->topic, (unsigned)ed->payloadlen);
		return MOSQ_ERR_SUCCESS;
	}
	rc = cw_link_call_min(&p->link, &b, CW_MSG_PUBLISHES, &r, CW_MESSAGES_VERSION);
	if(rc == 0 && parse_publishes(&r, replies, &n)){
		cw_link_fail(&p->link, "garbled PUBLISHES");
		rc = -1;
	}
	cw_sync_link_state(p);
	if(rc) return MOSQ_ERR_SUCCESS;
	for(size_t i = 0; i < n; i++) publish_reply(&replies[i]);
	return MOSQ_ERR_SUCCESS;
}
