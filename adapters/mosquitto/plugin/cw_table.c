/* certwarden Mosquitto plugin: per-connection state and the per-client decision cache.
 *
 * Invariants:
 * - an entry exists only for a (context, client id) whose CONNECT certwarden allowed;
 * - a cached decision is used only while its epoch equals the table's cache_epoch
 *   (bumped on every change certwarden reports and on every link failure) and
 *   before its TTL runs out;
 * - memory is bounded: cache_size slots per client, topics over CW_CACHE_TOPIC_MAX
 *   bytes are never cached, at most max_offline disconnected entries are kept.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>

#include "cw.h"

uint32_t cw_hash(const void *p, size_t n)
{
	const uint8_t *s = p;
	uint32_t h = 2166136261u; /* FNV-1a */

	for(size_t i = 0; i < n; i++){
		h ^= s[i];
		h *= 16777619u;
	}
	return h;
}

int cw_table_init(struct cw_table *t, uint32_t cache_size, size_t max_offline)
{
	memset(t, 0, sizeof(*t));
	t->nbuckets = 256;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	t->cache_size = cache_size;
	t->max_offline = max_offline;
	t->cache_epoch = 1;
	return t->buckets ? 0 : -1;
}

static void cache_free(struct cw_client *c, uint32_t slots)
{
	if(!c->cache) return;
	for(uint32_t i = 0; i < slots; i++) free(c->cache[i].topic);
	free(c->cache);
	c->cache = NULL;
}

static void client_free(struct cw_table *t, struct cw_client *c)
{
	cache_free(c, t->cache_size);
	free(c->id);
	free(c);
}

void cw_table_free(struct cw_table *t)
{
	for(size_t i = 0; i < t->nbuckets; i++){
		struct cw_client *c = t->buckets[i];
		while(c){
			struct cw_client *next = c->hnext;
			client_free(t, c);
			c = next;
		}
	}
	free(t->buckets);
	memset(t, 0, sizeof(*t));
}

static void grow(struct cw_table *t)
{
	size_t n = t->nbuckets * 2;
	struct cw_client **b = calloc(n, sizeof(*b));

	if(!b) return; /* keep the longer chains; still correct */
	for(size_t i = 0; i < t->nbuckets; i++){
		struct cw_client *c = t->buckets[i];
		while(c){
			struct cw_client *next = c->hnext;
			c->hnext = b[c->id_hash & (n - 1)];
			b[c->id_hash & (n - 1)] = c;
			c = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

struct cw_client *cw_client_find(struct cw_table *t, const struct mosquitto *ctx, const char *id)
{
	size_t n;
	uint32_t h;

	if(!id) return NULL;
	n = strlen(id);
	h = cw_hash(id, n);
	for(struct cw_client *c = t->buckets[h & (t->nbuckets - 1)]; c; c = c->hnext){
		if(c->ctx == ctx && c->id_hash == h && c->id_len == n && !memcmp(c->id, id, n)) return c;
	}
	return NULL;
}

struct cw_client *cw_client_add(struct cw_table *t, const struct mosquitto *ctx, const char *id,
		const char *peer, const uint8_t fp[CW_FP_LEN])
{
	struct cw_client *c = calloc(1, sizeof(*c));
	size_t n = strlen(id);
	size_t i;

	if(!c) return NULL;
	c->id = malloc(n + 1);
	if(!c->id){
		free(c);
		return NULL;
	}
	memcpy(c->id, id, n + 1);
	c->id_len = n;
	c->id_hash = cw_hash(id, n);
	c->ctx = ctx;
	strncpy(c->peer, peer, CW_MAX_PEER);
	memcpy(c->fp, fp, CW_FP_LEN);
	c->online = true;
	c->seq = ++t->next_seq;
	if(t->count >= t->nbuckets) grow(t);
	i = c->id_hash & (t->nbuckets - 1);
	c->hnext = t->buckets[i];
	t->buckets[i] = c;
	t->count++;
	return c;
}

static void offline_unlink(struct cw_table *t, struct cw_client *c)
{
	if(c->oprev) c->oprev->onext = c->onext; else if(t->ohead == c) t->ohead = c->onext;
	if(c->onext) c->onext->oprev = c->oprev; else if(t->otail == c) t->otail = c->oprev;
	c->oprev = c->onext = NULL;
}

void cw_client_remove(struct cw_table *t, struct cw_client *c)
{
	struct cw_client **pp = &t->buckets[c->id_hash & (t->nbuckets - 1)];

	while(*pp && *pp != c) pp = &(*pp)->hnext;
	if(!*pp) return;
	*pp = c->hnext;
	t->count--;
	if(!c->online){
		offline_unlink(t, c);
		t->offline--;
	}
	client_free(t, c);
}

void cw_client_disconnected(struct cw_table *t, struct cw_client *c)
{
	if(!c->online) return;
	/* A newer authenticated connection with this id took the session over
	 * (Mosquitto disconnects the old context after the new CONNECT passed). */
	for(struct cw_client *o = t->buckets[c->id_hash & (t->nbuckets - 1)]; o; o = o->hnext){
		if(o != c && o->seq > c->seq && o->id_len == c->id_len && !memcmp(o->id, c->id, c->id_len)){
			cw_client_remove(t, c);
			return;
		}
	}
	c->online = false;
	cache_free(c, t->cache_size); /* reallocated only if this session still gets checks */
	c->cache_next = 0;
	c->oprev = t->otail;
	if(t->otail) t->otail->onext = c; else t->ohead = c;
	t->otail = c;
	t->offline++;
	while(t->offline > t->max_offline && t->ohead){
		cw_client_remove(t, t->ohead);
	}
}

void cw_table_flush(struct cw_table *t)
{
	t->cache_epoch++;
}

static struct cw_cache_entry *cache_find(struct cw_table *t, struct cw_client *c, uint32_t h,
		uint8_t action, uint8_t flags, uint8_t qos, const char *topic, size_t topic_len)
{
	if(!c->cache) return NULL;
	for(uint32_t i = 0; i < t->cache_size; i++){
		struct cw_cache_entry *e = &c->cache[i];
		if(e->topic && e->hash == h && e->action == action && e->flags == flags && e->qos == qos
				&& e->topic_len == topic_len && !memcmp(e->topic, topic, topic_len)){
			return e;
		}
	}
	return NULL;
}

bool cw_cache_get(struct cw_table *t, struct cw_client *c, uint8_t action, uint8_t flags,
		uint8_t qos, const char *topic, size_t topic_len, uint64_t now_ms, bool *allowed)
{
	struct cw_cache_entry *e;

	if(topic_len > CW_CACHE_TOPIC_MAX) return false;
	e = cache_find(t, c, cw_hash(topic, topic_len), action, flags, qos, topic, topic_len);
	if(!e || e->epoch != t->cache_epoch || now_ms >= e->expires_ms) return false;
	*allowed = e->allowed != 0;
	return true;
}

void cw_cache_put(struct cw_table *t, struct cw_client *c, uint8_t action, uint8_t flags,
		uint8_t qos, const char *topic, size_t topic_len, uint64_t expires_ms, bool allowed)
{
	uint32_t h;
	struct cw_cache_entry *e;

	if(t->cache_size == 0 || topic_len > CW_CACHE_TOPIC_MAX) return;
	if(!c->cache){
		c->cache = calloc(t->cache_size, sizeof(*c->cache));
		if(!c->cache) return;
	}
	h = cw_hash(topic, topic_len);
	e = cache_find(t, c, h, action, flags, qos, topic, topic_len);
	if(!e){
		e = &c->cache[c->cache_next];
		c->cache_next = (c->cache_next + 1) % t->cache_size;
		free(e->topic);
		e->topic = malloc(topic_len + 1);
		if(!e->topic) return;
		memcpy(e->topic, topic, topic_len);
		e->topic[topic_len] = '\0';
		e->topic_len = (uint16_t)topic_len;
		e->hash = h;
		e->action = action;
		e->flags = flags;
		e->qos = qos;
	}
	e->allowed = allowed ? 1 : 0;
	e->epoch = t->cache_epoch;
	e->expires_ms = expires_ms;
}
