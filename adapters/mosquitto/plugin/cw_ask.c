/* certwarden Mosquitto plugin: asking certwarden (connect decisions) and applying the
 * changes it reports (cache flush, kicks, re-checks of live sessions).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "cw.h"

void cw_sync_link_state(struct cw_plugin *p)
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

int cw_parse_decision(struct cw_reader *r, bool *allowed, uint32_t *ttl_ms, char *reason,
		size_t cap)
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

int cw_connect_decision(struct cw_plugin *p, const struct mosquitto *client, uint8_t type,
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
	if(rc == 0 && cw_parse_decision(&r, allowed, &ttl, reason, cap)){
		cw_link_fail(&p->link, "garbled DECISION");
		rc = -1;
	}
	cw_sync_link_state(p);
	return rc;
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
				victims[nv] = (struct cw_victim){c->ctx, c->online ? strdup(c->id) : NULL};
				if(victims[nv].id) nv++;
				else cw_client_remove(&p->table, c); /* offline, or no memory to kick: deny all */
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
		if(cw_connect_decision(p, check[i]->ctx, CW_MSG_CONNECT_CHECK, fp, &allowed, reason,
				sizeof(reason))){
			complete = false;
			break;
		}
		if(!allowed){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "certwarden: disconnecting %s: %s", check[i]->id, reason);
			victims[nv] = (struct cw_victim){check[i]->ctx, strdup(check[i]->id)};
			if(victims[nv].id) nv++;
			else cw_client_remove(&p->table, check[i]); /* cannot kick: deny all its checks */
		}
	}
	/* Kicking runs our DISCONNECT handler, which edits the table: look entries up again. */
	for(size_t i = 0; i < nv; i++){
		struct cw_client *c;
		mosquitto_kick_client_by_clientid(victims[i].id, false);
		c = cw_client_find(&p->table, victims[i].ctx, victims[i].id);
		if(c) cw_client_remove(&p->table, c);
		free(victims[i].id);
	}
	free(check);
	free(victims);
	return complete;
}

void cw_poll_changes(struct cw_plugin *p)
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
		cw_sync_link_state(p);
		return;
	}
	cw_sync_link_state(p);
	generation = cw_get_u64(&r);
	flags = cw_get_u8(&r);
	nk = cw_get_u16(&r);
	k = cw_get_raw(&r, nk * CW_FP_LEN);
	nr = cw_get_u16(&r);
	re = cw_get_raw(&r, nr * CW_FP_LEN);
	if(r.bad || r.pos != r.len){
		cw_link_fail(&p->link, "garbled CHANGES reply");
		cw_sync_link_state(p);
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
