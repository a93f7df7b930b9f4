/* certwarden Mosquitto plugin: declarations shared by the wire, table and plugin units.
 *
 * The plugin holds no policy. It forwards what Mosquitto knows (leaf certificate,
 * client id, peer address, topic, access) to the certwarden authz socket and
 * enforces the answer. The wire format is specified in ../PROTOCOL.md; the
 * limits below are part of it and must match adapters/mosquitto/wire.py.
 */
#ifndef CERTWARDEN_CW_H
#define CERTWARDEN_CW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mosquitto_broker.h>

#define CW_PROTOCOL_VERSION 2u   /* highest version spoken; HELLO negotiates down to 1 */
#define CW_MESSAGES_VERSION 2u   /* first version with MESSAGE / PUBLISHES */
#define CW_MAX_FRAME 65536u    /* type byte + body; the u32 length prefix excluded */
#define CW_MAX_DER 16384u
#define CW_MAX_CLIENT_ID 1024u
#define CW_MAX_PEER 64u
#define CW_MAX_TOPIC 32768u
#define CW_MAX_REASON 1024u
#define CW_FP_LEN 32u          /* SHA-256 of the leaf certificate DER */
#define CW_MAX_PUBLISHES 16u   /* entries in one PUBLISHES reply */
#define CW_CACHE_TOPIC_MAX 512u /* longer topics are asked every time, never cached */

enum cw_msg_type {
	CW_MSG_HELLO = 0x01,
	CW_MSG_CONNECT = 0x02,
	CW_MSG_ACCESS = 0x03,
	CW_MSG_CHANGES = 0x04,
	CW_MSG_CONNECT_CHECK = 0x05,
	CW_MSG_MESSAGE = 0x06,
	CW_MSG_HELLO_REPLY = 0x81,
	CW_MSG_DECISION = 0x82,
	CW_MSG_CHANGES_REPLY = 0x84,
	CW_MSG_PUBLISHES = 0x86,
};

enum cw_action { CW_ACTION_PUBLISH = 1, CW_ACTION_SUBSCRIBE = 2, CW_ACTION_RECEIVE = 3 };

#define CW_ACCESS_FLAG_RETAIN 0x01u
#define CW_CHANGES_FLAG_RESYNC 0x01u

/* ---- wire (cw_wire.c) ---------------------------------------------------- */

/* Bounded writer over a fixed buffer: any write past cap sets overflow, never writes. */
struct cw_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	bool overflow;
};

/* Bounded reader: any read past len sets bad and yields zeros / NULL. */
struct cw_reader {
	const uint8_t *data;
	size_t len;
	size_t pos;
	bool bad;
};

void cw_put_u8(struct cw_buf *b, uint8_t v);
void cw_put_u16(struct cw_buf *b, uint16_t v);
void cw_put_u32(struct cw_buf *b, uint32_t v);
void cw_put_u64(struct cw_buf *b, uint64_t v);
void cw_put_raw(struct cw_buf *b, const void *p, size_t n);
void cw_put_str(struct cw_buf *b, const char *s, size_t n, size_t max); /* u16 length + bytes */
/* Reserve n bytes and return where to write them, or NULL (overflow set). */
uint8_t *cw_put_space(struct cw_buf *b, size_t n);

uint8_t cw_get_u8(struct cw_reader *r);
uint16_t cw_get_u16(struct cw_reader *r);
uint32_t cw_get_u32(struct cw_reader *r);
uint64_t cw_get_u64(struct cw_reader *r);
const uint8_t *cw_get_raw(struct cw_reader *r, size_t n);
const uint8_t *cw_get_str(struct cw_reader *r, size_t max, size_t *n);

/* The single connection to the authz server. Requests are strictly sequential. */
struct cw_link {
	char path[108];        /* sun_path */
	int fd;                /* -1 when closed */
	uint32_t timeout_ms;   /* whole round trip, connect + HELLO included */
	uint32_t retry_min_ms; /* first back-off after a failure, doubled up to retry_max_ms */
	uint32_t retry_max_ms;
	uint32_t retry_ms;
	uint64_t next_attempt_ms; /* no connect attempt before this (monotonic ms) */
	uint64_t server_epoch;    /* from HELLO_REPLY; 0 before the first HELLO */
	uint8_t version;          /* negotiated by the last HELLO; 0 while closed */
	bool epoch_changed;       /* set when a HELLO_REPLY carried a new epoch; caller clears */
	bool down;                /* between a failure and the next successful HELLO */
	uint64_t failures;        /* bumped on every failure; callers flush caches on change */
	uint8_t *tx;              /* 4 + CW_MAX_FRAME bytes */
	uint8_t *rx;              /* 4 + CW_MAX_FRAME bytes */
};

uint64_t cw_now_ms(void);
int cw_link_init(struct cw_link *l, const char *path, uint32_t timeout_ms, uint32_t retry_max_ms);
void cw_link_free(struct cw_link *l);
/* Start a request frame of `type` in l->tx. */
struct cw_buf cw_link_begin(struct cw_link *l, uint8_t type);
/* Send the request, read one reply of type `expect`. 0: *reply covers the reply body.
 * -1: transport error, timeout, oversize or wrong type; the link is closed and backs off. */
int cw_link_call(struct cw_link *l, struct cw_buf *req, uint8_t expect, struct cw_reader *reply);
/* As cw_link_call, but the request needs protocol version min_version: -2 (link kept, nothing
 * sent, not a failure) when the server negotiated an older one. */
int cw_link_call_min(struct cw_link *l, struct cw_buf *req, uint8_t expect, struct cw_reader *reply,
		uint8_t min_version);
/* A well-framed reply did not parse: the stream is suspect; close it and back off. */
void cw_link_fail(struct cw_link *l, const char *why);

/* ---- client table (cw_table.c) ------------------------------------------- */

struct cw_cache_entry {
	char *topic;      /* NULL when the slot is empty */
	uint64_t epoch;   /* valid only while equal to the table's cache_epoch */
	uint64_t expires_ms;
	uint32_t hash;
	uint16_t topic_len;
	uint8_t action;
	uint8_t flags;
	uint8_t qos;
	uint8_t allowed;
};

/* One authenticated connection, keyed by (Mosquitto context pointer, client id).
 * ctx is used as an identity only; it is dereferenced only while online. */
struct cw_client {
	struct cw_client *hnext;            /* hash chain */
	struct cw_client *oprev, *onext;    /* offline list, oldest first */
	const struct mosquitto *ctx;
	char *id;
	size_t id_len;
	uint32_t id_hash;
	char peer[CW_MAX_PEER + 1];
	uint8_t fp[CW_FP_LEN];
	bool online;
	uint64_t seq;                       /* authentication order */
	struct cw_cache_entry *cache;       /* lazily allocated, cache_size slots */
	uint32_t cache_next;                /* round-robin eviction */
};

struct cw_table {
	struct cw_client **buckets;
	size_t nbuckets;
	size_t count;
	struct cw_client *ohead, *otail;
	size_t offline;
	size_t max_offline;
	uint32_t cache_size;
	uint64_t cache_epoch;
	uint64_t next_seq;
};

int cw_table_init(struct cw_table *t, uint32_t cache_size, size_t max_offline);
void cw_table_free(struct cw_table *t);
uint32_t cw_hash(const void *p, size_t n);
struct cw_client *cw_client_find(struct cw_table *t, const struct mosquitto *ctx, const char *id);
struct cw_client *cw_client_add(struct cw_table *t, const struct mosquitto *ctx, const char *id,
		const char *peer, const uint8_t fp[CW_FP_LEN]);
void cw_client_remove(struct cw_table *t, struct cw_client *c);
/* The connection went away: forget it when a newer connection holds the id, else keep it
 * offline (Mosquitto still runs its will and queues for its session), bounded by max_offline,
 * its cache freed. */
void cw_client_disconnected(struct cw_table *t, struct cw_client *c);
void cw_table_flush(struct cw_table *t);
bool cw_cache_get(struct cw_table *t, struct cw_client *c, uint8_t action, uint8_t flags,
		uint8_t qos, const char *topic, size_t topic_len, uint64_t now_ms, bool *allowed);
void cw_cache_put(struct cw_table *t, struct cw_client *c, uint8_t action, uint8_t flags,
		uint8_t qos, const char *topic, size_t topic_len, uint64_t expires_ms, bool allowed);

/* ---- the plugin (certwarden_plugin.c, cw_ask.c) ----------------------------- */

struct cw_victim {
	const struct mosquitto *ctx;
	char *id;
};

struct cw_plugin {
	mosquitto_plugin_id_t *identifier;
	struct cw_link link;
	struct cw_table table;
	uint32_t tick_ms;
	uint64_t next_tick_ms;
	uint64_t generation;   /* last generation whose changes were fully applied */
	bool resync;           /* re-check every live session at the next poll */
	uint64_t seen_failures;
	struct cw_victim *reap;  /* ended sessions to forget at the next tick (after their will) */
	size_t nreap, reap_cap;
};

/* Flush caches after any link failure; schedule a full re-check after a new server epoch. */
void cw_sync_link_state(struct cw_plugin *p);
/* DECISION body: u8 allowed | u32 ttl_ms | str reason. 0 when well formed; reason is made
 * log-safe (printable ASCII) when a buffer is given. */
int cw_parse_decision(struct cw_reader *r, bool *allowed, uint32_t *ttl_ms, char *reason,
		size_t cap);
/* Ask CONNECT or CONNECT_CHECK for the client's leaf certificate; fp receives its SHA-256.
 * 0 with *allowed set when certwarden answered; -1 when it could not be asked. */
int cw_connect_decision(struct cw_plugin *p, const struct mosquitto *client, uint8_t type,
		uint8_t fp[CW_FP_LEN], bool *allowed, char *reason, size_t cap);
/* One CHANGES round trip; on a new generation flush caches, kick and re-check sessions. */
void cw_poll_changes(struct cw_plugin *p);

/* ---- device requests (cw_message.c) ----------------------------------------- */

/* True for the only topics forwarded as MESSAGE: manage/cert/myorg/cid/+,
 * +/manage/cert/register/cid/+ and +/manage/cert/unregister/cid/+ ('+' as in MQTT: one
 * level, possibly empty; topics starting with '$' never match, MQTT 5 section 4.7.2). */
bool cw_request_topic(const char *topic, size_t len);
/* MOSQ_EVT_MESSAGE: forward a request, publish certwarden's replies. Always
 * MOSQ_ERR_SUCCESS: the request itself is delivered as usual; a failed ask means no reply. */
int cw_on_message(int event, void *event_data, void *userdata);

#endif
