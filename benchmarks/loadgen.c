/*
 * loadgen.c - a closed-loop load generator for tlsmgr(8) servers.
 *
 * Built and run by benchmarks/compare.py (gcc -O2 loadgen.c -o loadgen).
 * One process, one epoll loop, N persistent UNIX-socket connections.  Each
 * connection has exactly one request outstanding at a time, as Postfix's
 * clients do (they never pipeline): send a request, wait for the whole
 * reply, record the latency, send the next.  After a warm-up the run is
 * measured for a fixed time, and one JSON object goes to stdout: requests,
 * replies by status, throughput, latency percentiles, and this process's
 * own CPU time (so that the driver can show the generator is not the
 * bottleneck).
 *
 * Workloads:
 *   lookup-miss  lookup of ids never stored (status -1 expected)
 *   lookup-hit   lookup of K ids stored by an untimed setup phase
 *   mix          90% lookup of the stored ids, 10% update
 *   update       update only (fresh ids, or cycling over the K stored ids)
 *   seed         seed, size 32
 *   tktkey       tktkey with an empty key name (the current key)
 *
 * The per-request work is kept small: request buffers are built once per
 * connection, and only the 16 hex digits that vary in a cache id are
 * rewritten before each send.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum workload { W_LOOKUP_MISS, W_LOOKUP_HIT, W_MIX, W_UPDATE, W_SEED, W_TKTKEY };
static const char *const workload_names[] = {
    "lookup-miss", "lookup-hit", "mix", "update", "seed", "tktkey", NULL};

/* Id classes: the same number gives different ids in different classes. */
enum { ID_STORED = 1, ID_MISSING = 2, ID_FRESH = 3 };

#define ID_LEN 64              /* hex characters, as smtpd's session ids */
#define ID_VARYING 16          /* leading hex digits rewritten per request */
#define MAX_STATUSES 8
#define RBUF_SIZE 65536

struct options {
    const char *socket_path;
    enum workload workload;
    int conns;
    int size;                  /* session bytes (before base64) */
    double seconds;            /* measured time */
    double warmup;
    long keys;                 /* K: ids stored by the setup phase */
    int cycle_updates;         /* update stored ids instead of fresh ones */
    const char *cache_type;
    double stall;              /* a reply later than this counts as a stall */
    int server_pid;            /* 0, or the daemon whose CPU time to report */
};

/* A request template: its bytes, and where the id's varying digits are. */
struct request {
    char *buf;
    size_t len;
    size_t id_offset;          /* 0: no id in this request */
};

/* Incremental attr0 reply parser: a reply ends at an empty name. */
struct parser {
    int at_value;              /* the next token is a value, not a name */
    int token;                 /* index of the current token */
    size_t token_len;
    char status[16];           /* the first value: the status */
    size_t status_len;
    size_t value2_len;         /* length of the second value (session etc.) */
};

struct conn {
    int fd;
    struct request lookup, update, other;
    const struct request *pending;   /* the request last sent */
    int outstanding;           /* its reply has not come yet */
    uint64_t serial;           /* requests sent on this connection */
    uint64_t sent_ns;
    int stalled;               /* the outstanding request was counted as a stall */
    struct parser parser;
};

struct status_count {
    char status[16];
    uint64_t count;
};

#define MAX_SLOW_AT 200

struct results {
    uint64_t *latencies;       /* ns, of replies to requests sent in the window */
    size_t count, cap;
    double slow_at[MAX_SLOW_AT];   /* s into the window, of the first slow replies */
    int nslow_at;
    uint64_t errors, bad_replies, stalls, closed;
    struct status_count statuses[MAX_STATUSES];
    int nstatuses;
    uint64_t other_statuses;
};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* A process's CPU time (all its threads) from /proc/PID/stat, or -1. */
static double process_cpu_seconds(int pid)
{
    char path[64], buf[1024], *p;
    unsigned long utime, stime;
    FILE *f;
    size_t n;

    if (pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may hold spaces and parentheses: skip past the last
     * ')'; utime and stime are the 12th and 13th fields after it. */
    if ((p = strrchr(buf, ')')) == NULL
        || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                  &utime, &stime) != 2)
        return -1;
    return (double) (utime + stime) / sysconf(_SC_CLK_TCK);
}

/* CPU time all CPUs spent busy, from /proc/stat: what is left after this
 * process and the daemon is other work that disturbed the measurement. */
static double machine_busy_seconds(void)
{
    unsigned long long user, nice, sys, idle, iowait, irq, softirq, steal;
    FILE *f = fopen("/proc/stat", "r");
    int n;

    if (f == NULL)
        return -1;
    n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
               &user, &nice, &sys, &idle, &iowait, &irq, &softirq, &steal);
    fclose(f);
    if (n != 8)
        return -1;
    return (double) (user + nice + sys + irq + softirq + steal) / sysconf(_SC_CLK_TCK);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
        + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* splitmix64's finalizer: a bijection, so distinct inputs give distinct
 * ids, and the ids land all over a btree as real session ids do. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static void write_id(char *dst, int id_class, uint64_t number)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t h = mix64(((uint64_t) id_class << 56) ^ number);
    for (int i = ID_VARYING - 1; i >= 0; i--, h >>= 4)
        dst[i] = hex[h & 15];
}

static char *base64(const unsigned char *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((len + 2) / 3) + 1), *p = out;
    size_t i;
    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = data[i] << 16 | data[i + 1] << 8 | data[i + 2];
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 63];
        *p++ = alphabet[(v >> 6) & 63];
        *p++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = data[i] << 16 | (i + 1 < len ? data[i + 1] << 8 : 0);
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 63];
        *p++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    return out;
}

/*
 * Build an attr0 message from NULL-terminated name, value pairs.  The value
 * "@ID" stands for a cache id: 16 varying hex digits then a fixed tail.
 */
static struct request build(const char *first, ...)
{
    static const char id_tail[] = "5e55101d0fbe4c4b0ddf00dcafe0000000000000000000000";
    struct request req = {0};
    size_t cap = 64;
    const char *token = first;
    va_list ap;

    req.buf = malloc(cap);
    va_start(ap, first);
    for (int i = 0; token != NULL; i++, token = va_arg(ap, const char *)) {
        int is_id = (i & 1) && strcmp(token, "@ID") == 0;
        size_t len = is_id ? ID_LEN : strlen(token);
        while (req.len + len + 2 > cap)
            req.buf = realloc(req.buf, cap *= 2);
        if (is_id) {
            req.id_offset = req.len;
            memset(req.buf + req.len, '0', ID_VARYING);
            memcpy(req.buf + req.len + ID_VARYING, id_tail, ID_LEN - ID_VARYING);
        } else {
            memcpy(req.buf + req.len, token, len);
        }
        req.len += len;
        req.buf[req.len++] = 0;
    }
    va_end(ap);
    req.buf[req.len++] = 0;            /* the empty name that ends a message */
    return req;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = 10};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (strlen(path) >= sizeof(sa.sun_path))
        die("socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
        die("connect %s: %s", path, strerror(errno));
    /* Reads and writes block, but never forever: a daemon that stops
     * reading makes a write fail after 10s.  (In the timed loop reads
     * happen only when epoll says data is there.) */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Feed reply bytes; returns how many were consumed, and sets *done when
 * they completed a message (a reply never shares a read with the next
 * one, since there is never more than one request outstanding). */
static size_t parse(struct parser *p, const char *data, size_t len, int *done)
{
    const char *cur = data, *end = data + len;

    *done = 0;
    while (cur < end) {
        const char *nul = memchr(cur, 0, end - cur);
        size_t run = (nul ? nul : end) - cur;
        if (p->token == 1 && p->status_len + run < sizeof(p->status)) {
            memcpy(p->status + p->status_len, cur, run);
            p->status_len += run;
        }
        p->token_len += run;
        if (nul == NULL)
            return len;
        cur = nul + 1;
        if (!p->at_value && p->token_len == 0) {
            p->status[p->status_len] = 0;
            *done = 1;
            return cur - data;
        }
        if (p->token == 3)
            p->value2_len = p->token_len;
        p->at_value = !p->at_value;
        p->token++;
        p->token_len = 0;
    }
    return len;
}

static void parser_reset(struct parser *p)
{
    memset(p, 0, sizeof(*p));
}

/* Blocking: read one whole message (the handshake, or a set-up reply). */
static void read_message(struct conn *c, const char *what)
{
    char buf[RBUF_SIZE];
    int done = 0;

    parser_reset(&c->parser);
    while (!done) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n <= 0)
            die("%s: %s", what, n == 0 ? "connection closed" : strerror(errno));
        if (parse(&c->parser, buf, n, &done) != (size_t) n)
            die("%s: more bytes than one message", what);
    }
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0)
            die("write: %s", strerror(errno));
        buf += n;
        len -= n;
    }
}

/* Which id a request of this connection carries. */
static void choose_id(const struct options *o, struct conn *c, int conn_index,
                      struct request *req, int is_update)
{
    /* Unique per connection and request; the stored ids are spread over
     * the connections so that they do not all walk the same keys. */
    uint64_t unique = (uint64_t) conn_index << 40 | c->serial;
    uint64_t stored = (c->serial + (uint64_t) conn_index * o->keys / o->conns) % o->keys;

    if (o->workload == W_LOOKUP_MISS)
        write_id(req->buf + req->id_offset, ID_MISSING, unique);
    else if (is_update && !o->cycle_updates)
        write_id(req->buf + req->id_offset, ID_FRESH, unique);
    else
        write_id(req->buf + req->id_offset, ID_STORED, stored);
}

static void start_request(const struct options *o, struct conn *c, int conn_index)
{
    struct request *req = &c->other;
    int is_update = 0;

    /* Connections take their updates at different turns, not in step. */
    if (o->workload == W_UPDATE
        || (o->workload == W_MIX && (c->serial + conn_index) % 10 == 9)) {
        req = &c->update;
        is_update = 1;
    } else if (o->workload != W_SEED && o->workload != W_TKTKEY) {
        req = &c->lookup;
    }
    if (req->id_offset)
        choose_id(o, c, conn_index, req, is_update);
    c->pending = req;
    c->outstanding = 1;
    c->stalled = 0;
    c->serial++;
    parser_reset(&c->parser);
    c->sent_ns = now_ns();
    /* The socket is blocking: with one request outstanding its buffer is
     * empty, so the write goes out whole at once. */
    write_all(c->fd, req->buf, req->len);
}

static void count_status(struct results *r, const char *status)
{
    for (int i = 0; i < r->nstatuses; i++) {
        if (strcmp(r->statuses[i].status, status) == 0) {
            r->statuses[i].count++;
            return;
        }
    }
    if (r->nstatuses == MAX_STATUSES) {
        r->other_statuses++;
        return;
    }
    snprintf(r->statuses[r->nstatuses].status, sizeof(r->statuses[0].status), "%s", status);
    r->statuses[r->nstatuses++].count = 1;
}

static void record(const struct options *o, struct results *r, struct conn *c,
                   uint64_t latency, size_t session_b64_len)
{
    const char *expected = o->workload == W_LOOKUP_MISS ? "4294967295" : "0";

    if (r->count == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1 << 16;
        r->latencies = realloc(r->latencies, r->cap * sizeof(*r->latencies));
        if (r->latencies == NULL)
            die("out of memory");
    }
    r->latencies[r->count++] = latency;
    count_status(r, c->parser.status);
    if (strcmp(c->parser.status, expected) != 0)
        r->errors++;
    /* A hit must give back the session that was stored. */
    else if (c->pending == &c->lookup && o->workload != W_LOOKUP_MISS
             && c->parser.value2_len != session_b64_len)
        r->bad_replies++;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return (x > y) - (x < y);
}

static double percentile_us(const struct results *r, double p)
{
    if (r->count == 0)
        return 0;
    size_t rank = (size_t) (p * r->count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > r->count)
        rank = r->count;
    return r->latencies[rank - 1] / 1000.0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --socket PATH --workload W [--conns N] [--size BYTES]\n"
            "               [--seconds S] [--warmup S] [--keys K] [--cycle-updates]\n"
            "               [--cache-type T] [--stall S] [--server-pid PID]\n"
            "workloads: lookup-miss lookup-hit mix update seed tktkey\n");
    exit(2);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"socket", required_argument, 0, 's'}, {"workload", required_argument, 0, 'w'},
        {"conns", required_argument, 0, 'c'},  {"size", required_argument, 0, 'z'},
        {"seconds", required_argument, 0, 't'}, {"warmup", required_argument, 0, 'W'},
        {"keys", required_argument, 0, 'k'},   {"cycle-updates", no_argument, 0, 'C'},
        {"cache-type", required_argument, 0, 'T'}, {"stall", required_argument, 0, 'S'},
        {"server-pid", required_argument, 0, 'P'}, {0, 0, 0, 0}};
    int opt, found = 0;

    *o = (struct options) {.conns = 1, .size = 300, .seconds = 3, .warmup = 0.5,
                           .keys = 1000, .cache_type = "smtpd", .stall = 1.0};
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 's': o->socket_path = optarg; break;
        case 'c': o->conns = atoi(optarg); break;
        case 'z': o->size = atoi(optarg); break;
        case 't': o->seconds = atof(optarg); break;
        case 'W': o->warmup = atof(optarg); break;
        case 'k': o->keys = atol(optarg); break;
        case 'C': o->cycle_updates = 1; break;
        case 'T': o->cache_type = optarg; break;
        case 'S': o->stall = atof(optarg); break;
        case 'P': o->server_pid = atoi(optarg); break;
        case 'w':
            found = 0;
            for (int i = 0; workload_names[i]; i++)
                if (strcmp(optarg, workload_names[i]) == 0)
                    o->workload = i, found = 1;
            if (!found)
                usage();
            break;
        default: usage();
        }
    }
    if (!o->socket_path || o->conns < 1 || o->size < 1 || o->keys < 1 || o->seconds <= 0
        || o->warmup < 0 || !found)
        usage();
}

/* Per-connection request buffers: each connection rewrites its own ids. */
static void build_requests(const struct options *o, struct conn *c, const char *session)
{
    c->lookup = build("request", "lookup", "cache_type", o->cache_type,
                      "cache_id", "@ID", NULL);
    c->update = build("request", "update", "cache_type", o->cache_type,
                      "cache_id", "@ID", "session", session, NULL);
    if (o->workload == W_SEED)
        c->other = build("request", "seed", "size", "32", NULL);
    else
        c->other = build("request", "tktkey", "keyname", "", NULL);
}

/* Untimed: store the K ids that lookup-hit and mix look up. */
static double store_keys(const struct options *o, struct conn *c)
{
    uint64_t start = now_ns();
    struct request *req = &c->update;

    for (long i = 0; i < o->keys; i++) {
        write_id(req->buf + req->id_offset, ID_STORED, i);
        write_all(c->fd, req->buf, req->len);
        read_message(c, "set-up update");
        if (strcmp(c->parser.status, "0") != 0)
            die("set-up update %ld: status %s", i, c->parser.status);
    }
    return (now_ns() - start) / 1e9;
}

/* CPU times at the edges of the measured window. */
struct sample {
    double own, server, machine;   /* -1 where unknown */
};

static struct sample take_sample(const struct options *o)
{
    return (struct sample) {cpu_seconds(), process_cpu_seconds(o->server_pid),
                            machine_busy_seconds()};
}

static double difference(double end, double start)
{
    return end >= 0 && start >= 0 ? end - start : -1;
}

/* What the timed loop works on. */
struct run {
    const struct options *o;
    struct conn *conns;
    struct results r;
    size_t session_len;        /* base64 length a lookup hit must return */
    uint64_t window_start, window_end;
};

/* A connection is readable: take the reply in, record it, send the next. */
static void on_readable(struct run *run, int ep, int i)
{
    static char rbuf[RBUF_SIZE];
    struct conn *c = &run->conns[i];
    ssize_t got = read(c->fd, rbuf, sizeof(rbuf));
    int done;

    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {                    /* the server hung up on us */
        run->r.closed++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->outstanding = 0;
        return;
    }
    if (parse(&c->parser, rbuf, got, &done) != (size_t) got || !done)
        return;                        /* (extra bytes are impossible) */
    uint64_t t = now_ns();
    c->outstanding = 0;
    /* Only requests sent inside the window count: none from the warm-up. */
    if (c->sent_ns >= run->window_start && t <= run->window_end) {
        record(run->o, &run->r, c, t - c->sent_ns, run->session_len);
        /* When the slow replies came says what slowed them. */
        if (t - c->sent_ns > (uint64_t) (run->o->stall * 1e9)
            && run->r.nslow_at < MAX_SLOW_AT)
            run->r.slow_at[run->r.nslow_at++] = (t - run->window_start) / 1e9;
    }
    if (t < run->window_end)
        start_request(run->o, c, i);
}

/* A stall: a reply that has not come for a long time (counted once). */
static void count_stalls(struct run *run)
{
    uint64_t now = now_ns(), stall_ns = (uint64_t) (run->o->stall * 1e9);

    for (int i = 0; i < run->o->conns; i++) {
        struct conn *c = &run->conns[i];
        if (c->outstanding && !c->stalled && now - c->sent_ns > stall_ns) {
            c->stalled = 1;
            run->r.stalls++;
        }
    }
}

static int watch(struct conn *conns, int n)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        ev.data.u32 = i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
    }
    return ep;
}

/* Warm up, then measure for o->seconds; returns the CPU times used. */
static struct sample timed_loop(struct run *run, struct sample *start)
{
    const struct options *o = run->o;
    struct epoll_event events[256];
    int ep = watch(run->conns, o->conns), measuring = 0;
    uint64_t warm_until = now_ns() + (uint64_t) (o->warmup * 1e9);

    run->window_start = run->window_end = UINT64_MAX;
    *start = take_sample(o);
    for (int i = 0; i < o->conns; i++)
        start_request(o, &run->conns[i], i);
    for (;;) {
        uint64_t now = now_ns();
        if (!measuring && now >= warm_until) {
            measuring = 1;
            *start = take_sample(o);
            run->window_start = now;
            run->window_end = now + (uint64_t) (o->seconds * 1e9);
        }
        if (now >= run->window_end)
            break;
        int n = epoll_wait(ep, events, 256, 50);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int e = 0; e < n; e++)
            on_readable(run, ep, events[e].data.u32);
        count_stalls(run);
    }
    return take_sample(o);
}

static void print_json(const struct run *run, double wall, struct sample used,
                       double setup)
{
    const struct options *o = run->o;
    const struct results *r = &run->r;
    int in_flight = 0;

    for (int i = 0; i < o->conns; i++)
        in_flight += run->conns[i].outstanding;
    printf("{\"workload\": \"%s\", \"conns\": %d, \"size\": %d, \"keys\": %ld, "
           "\"cycle_updates\": %s, \"seconds\": %.6f, \"requests\": %zu, "
           "\"throughput\": %.1f, \"errors\": %" PRIu64 ", \"bad_replies\": %" PRIu64 ", "
           "\"stalls\": %" PRIu64 ", \"closed\": %" PRIu64 ", \"in_flight_at_end\": %d, ",
           workload_names[o->workload], o->conns, o->size, o->keys,
           o->cycle_updates ? "true" : "false", wall, r->count, r->count / wall,
           r->errors, r->bad_replies, r->stalls, r->closed, in_flight);
    printf("\"statuses\": {");
    for (int i = 0; i < r->nstatuses; i++)
        printf("%s\"%s\": %" PRIu64, i ? ", " : "", r->statuses[i].status,
               r->statuses[i].count);
    if (r->other_statuses)
        printf("%s\"other\": %" PRIu64, r->nstatuses ? ", " : "", r->other_statuses);
    /* Replies that took longer than the stall time, counted exactly (the
     * stall count above sees only requests still waiting when it looks). */
    uint64_t slow = 0, stall_ns = (uint64_t) (o->stall * 1e9);
    for (size_t i = 0; i < r->count; i++)
        slow += r->latencies[i] > stall_ns;
    printf("}, \"slow_replies\": %" PRIu64 ", \"slow_at_seconds\": [", slow);
    for (int i = 0; i < r->nslow_at; i++)
        printf("%s%.3f", i ? ", " : "", r->slow_at[i]);
    printf("]");
    printf(", \"latency_us\": {\"p50\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f, "
           "\"max\": %.1f}, ",
           percentile_us(r, 0.50), percentile_us(r, 0.99), percentile_us(r, 0.999),
           percentile_us(r, 1.0));
    printf("\"cpu_seconds\": %.4f, \"cpu_share\": %.4f, ", used.own, used.own / wall);
    if (used.server >= 0)
        printf("\"server_cpu_seconds\": %.2f, \"server_cpu_share\": %.3f, ",
               used.server, used.server / wall);
    if (used.machine >= 0)
        printf("\"machine_busy_cpu_seconds\": %.2f, ", used.machine);
    printf("\"setup_seconds\": %.3f}\n", setup);
}

int main(int argc, char **argv)
{
    struct options o;
    struct run run = {.o = &o};
    struct sample start, end;
    unsigned char *raw;
    char *session;
    double setup = 0;

    parse_options(argc, argv, &o);
    raw = malloc(o.size);
    for (int i = 0; i < o.size; i++)
        raw[i] = (unsigned char) mix64(i);
    session = base64(raw, o.size);
    run.session_len = strlen(session);

    run.conns = calloc(o.conns, sizeof(*run.conns));
    for (int i = 0; i < o.conns; i++) {
        run.conns[i].fd = connect_to(o.socket_path);
        read_message(&run.conns[i], "handshake");
        build_requests(&o, &run.conns[i], session);
    }
    if (o.workload == W_LOOKUP_HIT || o.workload == W_MIX
        || (o.workload == W_UPDATE && o.cycle_updates))
        setup = store_keys(&o, &run.conns[0]);

    end = timed_loop(&run, &start);
    double wall = (now_ns() - run.window_start) / 1e9;
    struct sample used = {end.own - start.own, difference(end.server, start.server),
                          difference(end.machine, start.machine)};
    qsort(run.r.latencies, run.r.count, sizeof(*run.r.latencies), compare_u64);
    print_json(&run, wall, used, setup);
    return 0;
}
