/* certwarden Mosquitto plugin (API v5): enforce certwarden's decisions on CONNECT, on every
 * publish / subscribe / delivery, and on live sessions when certwarden reports changes; forward
 * device requests (manage/cert/...) to certwarden and publish its replies (cw_message.c).
 *
 * Options (plugin_opt_<key> in mosquitto.conf):
 *   socket        path of certwarden's authz unix socket (required)
 *   timeout_ms    whole round trip per request, default 2000
 *   cache_size    cached decisions per client, default 64 (0 disables the cache)
 *   max_offline   disconnected sessions remembered for wills / queued delivery, default 10000
 *   tick_ms       minimum interval between change polls, default 50
 *   retry_max_ms  longest back-off after the socket failed, default 2000
 *
 * Fail closed: no certificate, no entry, an oversize field, a socket error, a timeout or a
 * garbled reply all deny (MOSQ_ERR_AUTH / MOSQ_ERR_ACL_DENIED); the link reconnects on a
 * later request. Unsubscribe is always allowed (it only removes access).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "cw.h"

/* ---- events ----------------------------------------------------------------- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct cw_plugin *p = userdata;
	const char *id = mosquitto_client_id(ed->client);
	const char *peer = mosquitto_client_address(ed->client);
	struct cw_client *old;
	uint8_t fp[CW_FP_LEN];
	char reason[129] = "";
	bool allowed = false;

	(void)event;
	if(!id) return MOSQ_ERR_AUTH;
	/* A freed context's address can come back: never let an old entry speak for it. */
	old = cw_client_find(&p->table, ed->client, id);
	if(old) cw_client_remove(&p->table, old);
	if(cw_connect_decision(p, ed->client, CW_MSG_CONNECT, fp, &allowed, reason, sizeof(reason))){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "certwarden: CONNECT of %s from %s denied: %s",
				id, peer ? peer : "?", "no certificate or certwarden unavailable");
		return MOSQ_ERR_AUTH;
	}
	if(!allowed){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "certwarden: CONNECT of %s from %s denied: %s",
				id, peer ? peer : "?", reason);
		return MOSQ_ERR_AUTH;
	}
	if(!cw_client_add(&p->table, ed->client, id, peer ? peer : "", fp)) return MOSQ_ERR_AUTH;
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct cw_plugin *p = userdata;
	struct cw_client *c;
	struct cw_buf b;
	struct cw_reader r;
	uint8_t action, flags = ed->retain ? CW_ACCESS_FLAG_RETAIN : 0;
	size_t topic_len;
	uint64_t now;
	uint32_t ttl;
	bool allowed = false;

	(void)event;
	switch(ed->access){
		case MOSQ_ACL_UNSUBSCRIBE: return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_WRITE: action = CW_ACTION_PUBLISH; break;
		case MOSQ_ACL_READ: action = CW_ACTION_RECEIVE; break;
		case MOSQ_ACL_SUBSCRIBE: action = CW_ACTION_SUBSCRIBE; break;
		default: return MOSQ_ERR_ACL_DENIED;
	}
	c = cw_client_find(&p->table, ed->client, mosquitto_client_id(ed->client));
	if(!c || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	topic_len = strlen(ed->topic);
	if(topic_len > CW_MAX_TOPIC) return MOSQ_ERR_ACL_DENIED;
	now = cw_now_ms();
	if(cw_cache_get(&p->table, c, action, flags, ed->qos, ed->topic, topic_len, now, &allowed)){
		return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	b = cw_link_begin(&p->link, CW_MSG_ACCESS);
	cw_put_raw(&b, c->fp, CW_FP_LEN);
	cw_put_str(&b, c->id, c->id_len, CW_MAX_CLIENT_ID);
	cw_put_str(&b, c->peer, strlen(c->peer), CW_MAX_PEER);
	cw_put_u8(&b, action);
	cw_put_u8(&b, flags);
	cw_put_u8(&b, ed->qos);
	cw_put_str(&b, ed->topic, topic_len, CW_MAX_TOPIC);
	if(cw_link_call(&p->link, &b, CW_MSG_DECISION, &r)){
		cw_sync_link_state(p);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(cw_parse_decision(&r, &allowed, &ttl, NULL, 0)){
		cw_link_fail(&p->link, "garbled DECISION");
		cw_sync_link_state(p);
		return MOSQ_ERR_ACL_DENIED;
	}
	cw_sync_link_state(p);
	if(ttl > 0){
		cw_cache_put(&p->table, c, action, flags, ed->qos, ed->topic, topic_len, now + ttl, allowed);
	}
	return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct cw_plugin *p = userdata;
	const char *id = mosquitto_client_id(ed->client);
	struct cw_client *c;
	char *copy;
	bool ends;

	(void)event;
	/* Kept offline rather than dropped: Mosquitto checks the will (WRITE) right after this
	 * event and keeps queueing (READ) for persistent sessions. */
	c = cw_client_find(&p->table, ed->client, id);
	if(!c) return MOSQ_ERR_SUCCESS;
	/* An MQTT 3.1(.1) clean session ends with this connection: forget it at the next tick,
	 * which 2.0.11 runs before it frees (and could reuse) the context. MQTT 5 does not show
	 * its session expiry to plugins, so those wait in the bounded offline list. */
	ends = mosquitto_client_protocol_version(ed->client) != 5
			&& mosquitto_client_clean_session(ed->client);
	cw_client_disconnected(&p->table, c);
	if(ends && cw_client_find(&p->table, ed->client, id)){
		if(p->nreap == p->reap_cap){
			size_t cap = p->reap_cap ? p->reap_cap * 2 : 16;
			struct cw_victim *r = realloc(p->reap, cap * sizeof(*r));
			if(!r) return MOSQ_ERR_SUCCESS; /* the offline bound still applies */
			p->reap = r;
			p->reap_cap = cap;
		}
		copy = strdup(id);
		if(copy){
			p->reap[p->nreap].ctx = ed->client;
			p->reap[p->nreap].id = copy;
			p->nreap++;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static void reap_ended(struct cw_plugin *p)
{
	for(size_t i = 0; i < p->nreap; i++){
		struct cw_client *c = cw_client_find(&p->table, p->reap[i].ctx, p->reap[i].id);
		if(c && !c->online) cw_client_remove(&p->table, c);
		free(p->reap[i].id);
	}
	p->nreap = 0;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct cw_plugin *p = userdata;
	uint64_t now = cw_now_ms();

	(void)event;
	(void)event_data; /* 2.0.11 leaves its time fields zero */
	reap_ended(p);
	if(now < p->next_tick_ms) return MOSQ_ERR_SUCCESS;
	p->next_tick_ms = now + p->tick_ms;
	cw_poll_changes(p);
	return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points ---------------------------------------------------- */

static int parse_u32(const char *key, const char *value, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end = NULL;
	unsigned long v;

	errno = 0;
	v = strtoul(value, &end, 10);
	if(errno || !end || *end || end == value || v < min || v > max){
		mosquitto_log_printf(MOSQ_LOG_ERR, "certwarden: plugin_opt_%s must be %u..%u", key, min, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

static const struct { int event; MOSQ_FUNC_generic_callback cb; } cw_events[] = {
	{MOSQ_EVT_BASIC_AUTH, on_basic_auth},
	{MOSQ_EVT_ACL_CHECK, on_acl_check},
	{MOSQ_EVT_TICK, on_tick},
	{MOSQ_EVT_DISCONNECT, on_disconnect},
	{MOSQ_EVT_MESSAGE, cw_on_message},
};
#define CW_EVENT_COUNT (sizeof(cw_events) / sizeof(cw_events[0]))

static void plugin_free(struct cw_plugin *p)
{
	for(size_t i = 0; i < CW_EVENT_COUNT; i++){
		mosquitto_callback_unregister(p->identifier, cw_events[i].event, cw_events[i].cb, NULL);
	}
	for(size_t i = 0; i < p->nreap; i++) free(p->reap[i].id);
	free(p->reap);
	cw_link_free(&p->link);
	cw_table_free(&p->table);
	free(p);
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	const char *socket_path = NULL;
	uint32_t timeout_ms = 2000, cache_size = 64, max_offline = 10000;
	uint32_t tick_ms = 50, retry_max_ms = 2000;
	struct cw_plugin *p;
	int rc = 0;

	for(int i = 0; i < option_count && rc == 0; i++){
		const char *k = options[i].key, *v = options[i].value;
		if(!strcmp(k, "socket")) socket_path = v;
		else if(!strcmp(k, "timeout_ms")) rc = parse_u32(k, v, 1, 60000, &timeout_ms);
		else if(!strcmp(k, "cache_size")) rc = parse_u32(k, v, 0, 4096, &cache_size);
		else if(!strcmp(k, "max_offline")) rc = parse_u32(k, v, 0, 10000000, &max_offline);
		else if(!strcmp(k, "tick_ms")) rc = parse_u32(k, v, 1, 60000, &tick_ms);
		else if(!strcmp(k, "retry_max_ms")) rc = parse_u32(k, v, 1, 600000, &retry_max_ms);
		else {
			mosquitto_log_printf(MOSQ_LOG_ERR, "certwarden: unknown option plugin_opt_%s", k);
			rc = -1;
		}
	}
	if(rc) return MOSQ_ERR_INVAL;
	if(!socket_path || !socket_path[0]){
		mosquitto_log_printf(MOSQ_LOG_ERR, "certwarden: plugin_opt_socket is required");
		return MOSQ_ERR_INVAL;
	}
	p = calloc(1, sizeof(*p));
	if(!p) return MOSQ_ERR_NOMEM;
	p->identifier = identifier;
	p->tick_ms = tick_ms;
	if(cw_link_init(&p->link, socket_path, timeout_ms, retry_max_ms)
			|| cw_table_init(&p->table, cache_size, max_offline)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "certwarden: socket path too long or out of memory");
		plugin_free(p);
		return MOSQ_ERR_INVAL;
	}
	for(size_t i = 0; i < CW_EVENT_COUNT; i++){
		if(mosquitto_callback_register(identifier, cw_events[i].event, cw_events[i].cb, NULL, p)){
			plugin_free(p);
			return MOSQ_ERR_UNKNOWN;
		}
	}
	*userdata = p;
	mosquitto_log_printf(MOSQ_LOG_INFO, "certwarden: plugin ready, authz socket %s, timeout %u ms",
			socket_path, timeout_ms);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)options;
	(void)option_count;
	if(userdata) plugin_free(userdata);
	return MOSQ_ERR_SUCCESS;
}
