/* certwarden Mosquitto plugin (API v5): enforce certwarden's decisions on CONNECT, on every
 * publish / subscribe / delivery, and on live sessions when certwarden reports changes.
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

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "cw.h"

struct cw_plugin {
	mosquitto_plugin_id_t *identifier;
	struct cw_link link;
	struct cw_table table;
	uint32_t tick_ms;
	uint64_t next_tick_ms;
	uint64_t generation;   /* last generation whose changes were fully applied */
	bool resync;           /* re-check every live session at the next poll */
	uint64_t seen_failures;
};

struct cw_victim {
	const struct mosquitto *ctx;
	char *id;
};

/* ---- helpers ---------------------------------------------------------------- */

/* Flush caches after any link failure; schedule a full re-check after a new server epoch. */
static void sync_link_state(struct cw_plugin *p)
{
	if(p->link.failures != p->seen_failures){
		p->seen_failures = p->link.failures;
		cw_table_flush(&p->table);
	}
	if(p->link.epoch_changed){
		p->link.epoch_changed = false;
		p->resync = true;
		cw_table_flush(&p->table);
	}
}

/* DECISION body: u8 allowed | u32 ttl_ms | str reason. 0 when well formed. */
static int parse_decision(struct cw_reader *r, bool *allowed, uint32_t *ttl_ms, char *reason, size_t cap)
{
	uint8_t a = cw_get_u8(r);
	size_t n;
	const uint8_t *s;

	*ttl_ms = cw_get_u32(r);
	s = cw_get_str(r, CW_MAX_REASON, &n);
	if(r->bad || r->pos != r->len || a > 1) return -1;
	*allowed = a == 1;
	if(reason && cap > 0){
		size_t k = 0;
		for(size_t i = 0; i < n && k + 1 < cap; i++){
			reason[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?'; /* log-safe */
		}
		reason[k] = '\0';
	}
	return 0;
}

/* Ask CONNECT or CONNECT_CHECK for the client's leaf certificate.
 * 0 with *allowed set when certwarden answered; -1 when it could not be asked. */
static int connect_decision(struct cw_plugin *p, const struct mosquitto *client, uint8_t type,
		uint8_t fp[CW_FP_LEN], bool *allowed, char *reason, size_t cap)
{
	const char *id = mosquitto_client_id(client);
	const char *peer = mosquitto_client_address(client);
	X509 *cert = mosquitto_client_certificate(client);
	struct cw_buf b;
	struct cw_reader r;
	unsigned int md_len = 0;
	uint8_t *der;
	uint32_t ttl;
	int der_len;
	int rc;

	if(!cert || !id) {
		if(cert) X509_free(cert);
		return -1;
	}
	if(!peer) peer = "";
	der_len = i2d_X509(cert, NULL);
	if(der_len <= 0 || (unsigned)der_len > CW_MAX_DER
			|| !X509_digest(cert, EVP_sha256(), fp, &md_len) || md_len != CW_FP_LEN){
		X509_free(cert);
		return -1;
	}
	b = cw_link_begin(&p->link, type);
	cw_put_u32(&b, (uint32_t)der_len);
	der = cw_put_space(&b, (size_t)der_len);
	if(der && i2d_X509(cert, &der) != der_len) b.overflow = true;
	X509_free(cert);
	cw_put_str(&b, id, strlen(id), CW_MAX_CLIENT_ID);
	cw_put_str(&b, peer, strlen(peer), CW_MAX_PEER);
	rc = cw_link_call(&p->link, &b, CW_MSG_DECISION, &r);
	if(rc == 0 && parse_decision(&r, allowed, &ttl, reason, cap)){
		cw_link_fail(&p->link, "garbled DECISION");
		rc = -1;
	}
	sync_link_state(p);
	return rc;
}

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
	if(connect_decision(p, ed->client, CW_MSG_CONNECT, fp, &allowed, reason, sizeof(reason))){
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
		sync_link_state(p);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(parse_decision(&r, &allowed, &ttl, NULL, 0)){
		cw_link_fail(&p->link, "garbled DECISION");
		sync_link_state(p);
		return MOSQ_ERR_ACL_DENIED;
	}
	sync_link_state(p);
	if(ttl > 0) cw_cache_put(&p->table, c, action, flags, ed->qos, ed->topic, topic_len, now + ttl, allowed);
	return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct cw_plugin *p = userdata;
	struct cw_client *c;

	(void)event;
	/* Kept offline rather than dropped: Mosquitto checks the will (WRITE) right after this
	 * event and keeps queueing (READ) for persistent sessions. */
	c = cw_client_find(&p->table, ed->client, mosquitto_client_id(ed->client));
	if(c) cw_client_disconnected(&p->table, c);
	return MOSQ_ERR_SUCCESS;
}

static int fp_cmp(const void *a, const void *b)
{
	return memcmp(a, b, CW_FP_LEN);
}

static bool fp_in(const uint8_t *set, size_t n, const uint8_t *fp)
{
	return n > 0 && bsearch(fp, set, n, CW_FP_LEN, fp_cmp) != NULL;
}

static uint8_t *fp_copy_sorted(const uint8_t *src, size_t n)
{
	uint8_t *dst = malloc(n ? n * CW_FP_LEN : 1);

	if(dst && n){
		memcpy(dst, src, n * CW_FP_LEN);
		qsort(dst, n, CW_FP_LEN, fp_cmp);
	}
	return dst;
}

/* Apply a CHANGES reply: flush caches, kick listed sessions, re-check the others.
 * Returns false when a re-check could not be asked (the generation is then kept, so the
 * same changes are applied again on the next poll). */
static bool apply_changes(struct cw_plugin *p, const uint8_t *kick, size_t nk, const uint8_t *re,
		size_t nr, bool full)
{
	struct cw_client **check = calloc(p->table.count + 1, sizeof(*check));
	struct cw_victim *victims = calloc(p->table.count + 1, sizeof(*victims));
	size_t nc = 0, nv = 0;
	bool complete = true;

	cw_table_flush(&p->table);
	if(!check || !victims){
		free(check);
		free(victims);
		return false;
	}
	for(size_t i = 0; i < p->table.nbuckets; i++){
		struct cw_client *c = p->table.buckets[i];
		while(c){
			struct cw_client *next = c->hnext;
			if(fp_in(kick, nk, c->fp)){
				if(c->online) victims[nv++] = (struct cw_victim){c->ctx, strdup(c->id)};
				else cw_client_remove(&p->table, c);
			}else if(c->online && (full || fp_in(re, nr, c->fp))){
				check[nc++] = c;
			}
			c = next;
		}
	}
	for(size_t i = 0; i < nc; i++){
		uint8_t fp[CW_FP_LEN];
		bool allowed = true;
		char reason[129] = "";
		if(connect_decision(p, check[i]->ctx, CW_MSG_CONNECT_CHECK, fp, &allowed, reason, sizeof(reason))){
			complete = false;
			break;
		}
		if(!allowed){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "certwarden: disconnecting %s: %s", check[i]->id, reason);
			victims[nv++] = (struct cw_victim){check[i]->ctx, strdup(check[i]->id)};
		}
	}
	/* Kicking runs our DISCONNECT handler, which edits the table: look entries up again. */
	for(size_t i = 0; i < nv; i++){
		struct cw_client *c;
		if(!victims[i].id) continue;
		mosquitto_kick_client_by_clientid(victims[i].id, false);
		c = cw_client_find(&p->table, victims[i].ctx, victims[i].id);
		if(c) cw_client_remove(&p->table, c);
		free(victims[i].id);
	}
	free(check);
	free(victims);
	return complete;
}

static void poll_changes(struct cw_plugin *p)
{
	struct cw_buf b = cw_link_begin(&p->link, CW_MSG_CHANGES);
	struct cw_reader r;
	const uint8_t *k, *re;
	uint8_t *kick, *recheck;
	uint64_t generation;
	uint8_t flags;
	size_t nk, nr;
	bool full;

	cw_put_u64(&b, p->generation);
	if(cw_link_call(&p->link, &b, CW_MSG_CHANGES_REPLY, &r)){
		sync_link_state(p);
		return;
	}
	sync_link_state(p);
	generation = cw_get_u64(&r);
	flags = cw_get_u8(&r);
	nk = cw_get_u16(&r);
	k = cw_get_raw(&r, nk * CW_FP_LEN);
	nr = cw_get_u16(&r);
	re = cw_get_raw(&r, nr * CW_FP_LEN);
	if(r.bad || r.pos != r.len){
		cw_link_fail(&p->link, "garbled CHANGES reply");
		sync_link_state(p);
		return;
	}
	full = p->resync || (flags & CW_CHANGES_FLAG_RESYNC);
	if(generation == p->generation && !full) return;
	/* The lists live in the link's receive buffer, which re-checks overwrite. */
	kick = fp_copy_sorted(k, nk);
	recheck = fp_copy_sorted(re, nr);
	if(kick && recheck && apply_changes(p, kick, nk, recheck, nr, full)){
		p->generation = generation;
		p->resync = false;
	}else{
		cw_table_flush(&p->table);
	}
	free(kick);
	free(recheck);
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct cw_plugin *p = userdata;
	uint64_t now = cw_now_ms();

	(void)event;
	(void)event_data; /* 2.0.11 leaves its time fields zero */
	if(now < p->next_tick_ms) return MOSQ_ERR_SUCCESS;
	p->next_tick_ms = now + p->tick_ms;
	poll_changes(p);
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
};
#define CW_EVENT_COUNT (sizeof(cw_events) / sizeof(cw_events[0]))

static void plugin_free(struct cw_plugin *p)
{
	for(size_t i = 0; i < CW_EVENT_COUNT; i++){
		mosquitto_callback_unregister(p->identifier, cw_events[i].event, cw_events[i].cb, NULL);
	}
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
	uint32_t timeout_ms = 2000, cache_size = 64, max_offline = 10000, tick_ms = 50, retry_max_ms = 2000;
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
