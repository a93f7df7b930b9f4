/* certwarden Mosquitto plugin: frame codec and the blocking, deadline-bounded authz link.
 *
 * Invariants: nothing read from the socket is trusted: every length is checked
 * against CW_MAX_FRAME before reading, buffers are fixed (allocated once at init),
 * and any surprise closes the link so the next request starts on a clean stream.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "cw.h"

#define CW_AGENT "certwarden-mosquitto-plugin"

/* ---- writer / reader ------------------------------------------------------ */

static bool buf_room(struct cw_buf *b, size_t n)
{
	if(b->overflow || n > b->cap - b->len){
		b->overflow = true;
		return false;
	}
	return true;
}

void cw_put_u8(struct cw_buf *b, uint8_t v)
{
	if(buf_room(b, 1)) b->data[b->len++] = v;
}

void cw_put_u16(struct cw_buf *b, uint16_t v)
{
	cw_put_u8(b, (uint8_t)(v >> 8));
	cw_put_u8(b, (uint8_t)v);
}

void cw_put_u32(struct cw_buf *b, uint32_t v)
{
	cw_put_u16(b, (uint16_t)(v >> 16));
	cw_put_u16(b, (uint16_t)v);
}

void cw_put_u64(struct cw_buf *b, uint64_t v)
{
	cw_put_u32(b, (uint32_t)(v >> 32));
	cw_put_u32(b, (uint32_t)v);
}

void cw_put_raw(struct cw_buf *b, const void *p, size_t n)
{
	if(n == 0 || !buf_room(b, n)) return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void cw_put_str(struct cw_buf *b, const char *s, size_t n, size_t max)
{
	if(n > max || n > UINT16_MAX){
		b->overflow = true;
		return;
	}
	cw_put_u16(b, (uint16_t)n);
	cw_put_raw(b, s, n);
}

uint8_t *cw_put_space(struct cw_buf *b, size_t n)
{
	uint8_t *p;

	if(!buf_room(b, n)) return NULL;
	p = b->data + b->len;
	b->len += n;
	return p;
}

const uint8_t *cw_get_raw(struct cw_reader *r, size_t n)
{
	const uint8_t *p;

	if(r->bad || n > r->len - r->pos){
		r->bad = true;
		return NULL;
	}
	p = r->data + r->pos;
	r->pos += n;
	return p;
}

uint8_t cw_get_u8(struct cw_reader *r)
{
	const uint8_t *p = cw_get_raw(r, 1);
	return p ? p[0] : 0;
}

uint16_t cw_get_u16(struct cw_reader *r)
{
	const uint8_t *p = cw_get_raw(r, 2);
	return p ? (uint16_t)((p[0] << 8) | p[1]) : 0;
}

uint32_t cw_get_u32(struct cw_reader *r)
{
	uint32_t hi = cw_get_u16(r);
	return (hi << 16) | cw_get_u16(r);
}

uint64_t cw_get_u64(struct cw_reader *r)
{
	uint64_t hi = cw_get_u32(r);
	return (hi << 32) | cw_get_u32(r);
}

const uint8_t *cw_get_str(struct cw_reader *r, size_t max, size_t *n)
{
	size_t len = cw_get_u16(r);
	const uint8_t *p;

	*n = 0;
	if(len > max) r->bad = true;
	p = cw_get_raw(r, len); /* NULL (and bad) when short or already bad */
	if(p) *n = len;
	return p;
}

/* ---- socket I/O under a deadline -------------------------------------------- */

uint64_t cw_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int wait_fd(int fd, short events, uint64_t deadline)
{
	for(;;){
		uint64_t now = cw_now_ms();
		struct pollfd p = {.fd = fd, .events = events, .revents = 0};
		int rc;

		if(now >= deadline) return -1;
		rc = poll(&p, 1, (int)((deadline - now) > INT_MAX ? INT_MAX : (deadline - now)));
		if(rc > 0) return 0; /* readiness or error: the next send/recv tells which */
		if(rc == 0) return -1;
		if(errno != EINTR) return -1;
	}
}

static int write_all(int fd, const uint8_t *p, size_t n, uint64_t deadline)
{
	while(n > 0){
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if(w > 0){
			p += w;
			n -= (size_t)w;
		}else if(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)){
			if(wait_fd(fd, POLLOUT, deadline)) return -1;
		}else{
			return -1;
		}
	}
	return 0;
}

static int read_exact(int fd, uint8_t *p, size_t n, uint64_t deadline)
{
	while(n > 0){
		ssize_t r = recv(fd, p, n, 0);
		if(r > 0){
			p += r;
			n -= (size_t)r;
		}else if(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)){
			if(wait_fd(fd, POLLIN, deadline)) return -1;
		}else{
			return -1; /* EOF or error */
		}
	}
	return 0;
}

/* One frame out of `out` (length prefix already set), one frame into l->rx.
 * Returns the reply frame length (type byte included) or 0 on any failure. */
static size_t exchange(struct cw_link *l, const uint8_t *out, size_t out_len, uint8_t expect,
		uint64_t deadline)
{
	uint32_t n;

	if(write_all(l->fd, out, out_len, deadline)) return 0;
	if(read_exact(l->fd, l->rx, 4, deadline)) return 0;
	n = ((uint32_t)l->rx[0] << 24) | ((uint32_t)l->rx[1] << 16) | ((uint32_t)l->rx[2] << 8) | l->rx[3];
	if(n < 1 || n > CW_MAX_FRAME) return 0;
	if(read_exact(l->fd, l->rx + 4, n, deadline)) return 0;
	if(l->rx[4] != expect) return 0;
	return n;
}

static void set_length(uint8_t *frame, size_t total)
{
	uint32_t n = (uint32_t)(total - 4);

	frame[0] = (uint8_t)(n >> 24);
	frame[1] = (uint8_t)(n >> 16);
	frame[2] = (uint8_t)(n >> 8);
	frame[3] = (uint8_t)n;
}

static void link_close(struct cw_link *l)
{
	if(l->fd >= 0) close(l->fd);
	l->fd = -1;
	l->version = 0;
}

static int link_fail(struct cw_link *l, const char *why)
{
	if(!l->down){ /* say it once per outage */
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"certwarden: authz socket %s: %s; denying until it answers", l->path, why);
		l->down = true;
	}
	link_close(l);
	l->failures++;
	l->next_attempt_ms = cw_now_ms() + l->retry_ms;
	l->retry_ms = l->retry_ms * 2 > l->retry_max_ms ? l->retry_max_ms : l->retry_ms * 2;
	return -1;
}

/* The server closed or wrote unsolicited bytes while idle: the stream is unusable. */
static bool link_stale(struct cw_link *l)
{
	struct pollfd p = {.fd = l->fd, .events = POLLIN, .revents = 0};
	return poll(&p, 1, 0) != 0;
}

static int link_open(struct cw_link *l, uint64_t deadline)
{
	struct sockaddr_un addr;
	uint8_t hello[64];
	struct cw_buf b = {.data = hello, .len = 4, .cap = sizeof(hello), .overflow = false};
	struct cw_reader r;
	size_t n;
	uint8_t version;
	uint64_t epoch;
	int fd;

	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if(fd < 0) return link_fail(l, "socket() failed");
	if(fcntl(fd, F_SETFD, FD_CLOEXEC) || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)){
		close(fd);
		return link_fail(l, "fcntl() failed");
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, l->path, sizeof(addr.sun_path));
	/* A full backlog gives EAGAIN on a non-blocking unix connect: treat it as down. */
	if(connect(fd, (struct sockaddr *)&addr, sizeof(addr))){
		close(fd);
		return link_fail(l, strerror(errno));
	}
	l->fd = fd;

	cw_put_u8(&b, CW_MSG_HELLO);
	cw_put_u8(&b, CW_PROTOCOL_VERSION);
	cw_put_str(&b, CW_AGENT, strlen(CW_AGENT), 255);
	set_length(hello, b.len);
	n = exchange(l, hello, b.len, CW_MSG_HELLO_REPLY, deadline);
	if(n == 0) return link_fail(l, "no HELLO reply");
	r = (struct cw_reader){.data = l->rx + 5, .len = n - 1, .pos = 0, .bad = false};
	version = cw_get_u8(&r);
	epoch = cw_get_u64(&r);
	/* The server answers the version it will speak, never above ours (PROTOCOL.md). */
	if(r.bad || r.pos != r.len || version < 1 || version > CW_PROTOCOL_VERSION){
		return link_fail(l, "unsupported HELLO reply");
	}
	l->version = version;
	if(epoch != l->server_epoch){
		l->epoch_changed = true;
		l->server_epoch = epoch;
	}
	if(l->down){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "certwarden: authz socket %s answers again", l->path);
		l->down = false;
	}
	l->retry_ms = l->retry_min_ms;
	return 0;
}

/* ---- public link API ------------------------------------------------------- */

int cw_link_init(struct cw_link *l, const char *path, uint32_t timeout_ms, uint32_t retry_max_ms)
{
	memset(l, 0, sizeof(*l));
	l->fd = -1;
	if(strlen(path) >= sizeof(l->path)) return -1;
	strncpy(l->path, path, sizeof(l->path) - 1);
	l->timeout_ms = timeout_ms;
	l->retry_min_ms = retry_max_ms < 100 ? retry_max_ms : 100;
	l->retry_max_ms = retry_max_ms;
	l->retry_ms = l->retry_min_ms;
	l->tx = malloc(4 + CW_MAX_FRAME);
	l->rx = malloc(4 + CW_MAX_FRAME);
	return (l->tx && l->rx) ? 0 : -1;
}

void cw_link_free(struct cw_link *l)
{
	link_close(l);
	free(l->tx);
	free(l->rx);
	l->tx = l->rx = NULL;
}

struct cw_buf cw_link_begin(struct cw_link *l, uint8_t type)
{
	struct cw_buf b = {.data = l->tx, .len = 4, .cap = 4 + CW_MAX_FRAME, .overflow = false};

	cw_put_u8(&b, type);
	return b;
}

void cw_link_fail(struct cw_link *l, const char *why)
{
	(void)link_fail(l, why);
}

int cw_link_call(struct cw_link *l, struct cw_buf *req, uint8_t expect, struct cw_reader *reply)
{
	return cw_link_call_min(l, req, expect, reply, 1);
}

int cw_link_call_min(struct cw_link *l, struct cw_buf *req, uint8_t expect, struct cw_reader *reply,
		uint8_t min_version)
{
	uint64_t deadline = cw_now_ms() + l->timeout_ms;
	size_t n;

	if(req->overflow) return -1; /* a field over its limit: refuse without touching the link */
	if(l->fd >= 0 && link_stale(l)) link_close(l);
	if(l->fd < 0){
		if(cw_now_ms() < l->next_attempt_ms) return -1; /* backing off: deny at once */
		if(link_open(l, deadline)) return -1;
	}
	if(l->version < min_version) return -2; /* an older server: it would not know the frame */
	set_length(req->data, req->len);
	n = exchange(l, req->data, req->len, expect, deadline);
	if(n == 0) return link_fail(l, "request failed (timeout, closed or garbled reply)");
	*reply = (struct cw_reader){.data = l->rx + 5, .len = n - 1, .pos = 0, .bad = false};
	return 0;
}
