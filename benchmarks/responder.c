/*
 * responder.c - a tlsmgr(8) server that does no work: the machine's limit.
 *
 * Built and run by benchmarks/compare.py (gcc -O2 responder.c -o responder),
 * started as master(8) starts a daemon: the listening socket on fd 6 (fd 5,
 * master's status channel, is left alone).  One epoll loop; each
 * connection gets the handshake, then every request is read to its end (an
 * empty attribute name) and answered with a reply made once at start for
 * its request name: a lookup finds a session of --size bytes (or, with
 * --lookup miss, none), a seed is 32 bytes, a ticket key 88.  What it
 * costs per request is the kernel's and the event loop's share alone, so
 * ours/limit says how much of the rest is ours.
 *
 * With --store FILE (built with -DWITH_LMDB -llmdb), it also does the least
 * that a cache in an LMDB file must do for an update: put the request's
 * bytes under its cache_id, with the flags and group commits of
 * src/tlsmgr/stores/lmdb.py (no sync; committed once 64 are held, or 1 ms
 * after the first).  No age index, no eviction, no counts: a limit for
 * updates that also writes.
 *
 *   responder [--lookup hit|miss] [--size N] [--store FILE]
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_LMDB
#include <lmdb.h>
#endif

#define LISTEN_FD 6
#define MAX_EVENTS 256
#define BUF_SIZE 65536

struct reply {
    char *data;
    size_t len;
};

struct conn {
    int fd;
    int token;                 /* attribute tokens of this request so far */
    int token_len;             /* bytes of the current token */
    char name[16];             /* the request name: the second token */
    size_t name_len;
#ifdef WITH_LMDB
    char request[BUF_SIZE];    /* the request's bytes so far */
    size_t request_len;
    size_t id_start, id_len;   /* where the cache_id value is in them */
    int id_follows;            /* the token that ended was "cache_id" */
#endif
};

static struct reply lookup_reply, seed_reply, tktkey_reply, status_reply;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

#ifdef WITH_LMDB
#define HELD_AT_MOST 64
#define COMMIT_WITHIN_NS 1000000L

static MDB_env *env;
static MDB_txn *writer;          /* the open write transaction, or NULL */
static MDB_dbi sessions;
static int held;
static struct timespec first_held;

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
        exit(1);
    }
}

static void open_store(const char *path)
{
    check(mdb_env_create(&env), "mdb_env_create");
    check(mdb_env_set_mapsize(env, (size_t) 1 << 30), "mdb_env_set_mapsize");
    check(mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOMETASYNC | MDB_NORDAHEAD,
                       0600), "mdb_env_open");
}

static void commit(void)
{
    check(mdb_txn_commit(writer), "mdb_txn_commit");
    writer = NULL;
    held = 0;
}

static void store(struct conn *c)
{
    if (writer == NULL) {
        check(mdb_txn_begin(env, NULL, 0, &writer), "mdb_txn_begin");
        check(mdb_dbi_open(writer, NULL, 0, &sessions), "mdb_dbi_open");
        clock_gettime(CLOCK_MONOTONIC, &first_held);
    }
    MDB_val key = {c->id_len, c->request + c->id_start};
    MDB_val value = {c->request_len, c->request};
    check(mdb_put(writer, sessions, &key, &value, 0), "mdb_put");
    if (++held >= HELD_AT_MOST)
        commit();
}

/* A token has just ended, its NUL the last byte kept: where the value
 * after a "cache_id" name is. */
static void note_token(struct conn *c)
{
    if (c->request_len >= sizeof(c->request))
        return;                                 /* not all kept: not stored */
    size_t start = c->request_len - 1 - (size_t) c->token_len;
    if (c->token % 2 == 0) {
        c->id_follows = c->token_len == 8 && memcmp(c->request + start, "cache_id", 8) == 0;
    } else if (c->id_follows) {
        c->id_start = start;
        c->id_len = (size_t) c->token_len;
        c->id_follows = 0;
    }
}

/* After each turn of the loop, as the daemon does within COMMIT_WITHIN. */
static void commit_when_due(void)
{
    struct timespec now;
    if (writer == NULL)
        return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - first_held.tv_sec) * 1000000000L + now.tv_nsec - first_held.tv_nsec
        >= COMMIT_WITHIN_NS)
        commit();
}
#endif

/* "status\0N\0NAME\0BASE64\0\0": base64 of the length that n bytes take
 * (the load generator checks lengths, not contents). */
static struct reply make_reply(const char *status, const char *name, size_t n)
{
    size_t b64 = 4 * ((n + 2) / 3), padding = (3 - n % 3) % 3;
    struct reply r;
    r.data = malloc(64 + b64);
    if (r.data == NULL)
        die("malloc");
    r.len = (size_t) sprintf(r.data, "status%c%s%c", 0, status, 0);
    if (name != NULL) {
        r.len += (size_t) sprintf(r.data + r.len, "%s%c", name, 0);
        memset(r.data + r.len, 'A', b64 - padding);
        memset(r.data + r.len + b64 - padding, '=', padding);
        r.len += b64;
        r.data[r.len++] = 0;
    }
    r.data[r.len++] = 0;
    return r;
}

static void answer(struct conn *c)
{
    const struct reply *r = &status_reply;
    if (c->name_len == 6 && memcmp(c->name, "lookup", 6) == 0)
        r = &lookup_reply;
    else if (c->name_len == 4 && memcmp(c->name, "seed", 4) == 0)
        r = &seed_reply;
    else if (c->name_len == 6 && memcmp(c->name, "tktkey", 6) == 0)
        r = &tktkey_reply;
#ifdef WITH_LMDB
    else if (env != NULL && c->id_len > 0 && c->name_len == 6
             && memcmp(c->name, "update", 6) == 0)
        store(c);
#endif
    /* Replies are small and clients read them: a short write is not expected. */
    if (write(c->fd, r->data, r->len) != (ssize_t) r->len)
        c->fd = -c->fd - 1;
}

/* Tokens alternate name, value; a request ends at an empty name. */
static void feed(struct conn *c, const char *data, size_t len)
{
    for (size_t i = 0; i < len && c->fd >= 0; i++) {
#ifdef WITH_LMDB
        if (c->request_len < sizeof(c->request))
            c->request[c->request_len++] = data[i];
#endif
        if (data[i] != 0) {
            if (c->token == 1 && c->name_len < sizeof(c->name))
                c->name[c->name_len++] = data[i];
            c->token_len++;
            continue;
        }
        if (c->token_len == 0 && c->token % 2 == 0) {
            answer(c);
            c->token = 0;
            c->name_len = 0;
#ifdef WITH_LMDB
            c->request_len = c->id_len = 0;
#endif
        } else {
#ifdef WITH_LMDB
            note_token(c);
#endif
            c->token++;
        }
        c->token_len = 0;
    }
}

int main(int argc, char **argv)
{
    int miss = 0;
    size_t size = 300;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lookup") == 0 && i + 1 < argc)
            miss = strcmp(argv[++i], "miss") == 0;
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = (size_t) atol(argv[++i]);
#ifdef WITH_LMDB
        else if (strcmp(argv[i], "--store") == 0 && i + 1 < argc)
            open_store(argv[++i]);
#endif
    }                      /* and master(8)'s own arguments, ignored */
    lookup_reply = miss ? make_reply("4294967295", "session", 0) : make_reply("0", "session", size);
    seed_reply = make_reply("0", "seed", 32);
    tktkey_reply = make_reply("0", "keybuf", 88);
    status_reply = make_reply("0", NULL, 0);
    static const char handshake[] = "protocol\0tlsmgr_protocol\0";   /* and its final NUL */

    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    fcntl(LISTEN_FD, F_SETFL, fcntl(LISTEN_FD, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, LISTEN_FD, &ev) < 0)
        die("epoll_ctl listen");
    static char buf[BUF_SIZE];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
#ifdef WITH_LMDB
        commit_when_due();
        int n = epoll_wait(ep, events, MAX_EVENTS, writer != NULL ? 1 : -1);
#else
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
#endif
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(LISTEN_FD, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    c = calloc(1, sizeof(*c));
                    if (c == NULL)
                        die("calloc");
                    c->fd = fd;
                    if (write(fd, handshake, sizeof(handshake)) != sizeof(handshake)) {
                        close(fd);
                        free(c);
                        continue;
                    }
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0)
                        die("epoll_ctl conn");
                }
                continue;
            }
            ssize_t got = read(c->fd, buf, sizeof(buf));
            if (got > 0)
                feed(c, buf, (size_t) got);
            if (got == 0 || (got < 0 && errno != EAGAIN) || c->fd < 0) {
                close(c->fd < 0 ? -c->fd - 1 : c->fd);
                free(c);
            }
        }
    }
}
