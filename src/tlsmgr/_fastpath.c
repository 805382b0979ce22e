/*
 * _fastpath: the common requests, read, answered and counted in one call.
 *
 * A client of tlsmgr sends one request and waits for its reply, so that
 * nearly every read from a connection is one whole message: a lookup, an
 * update, a delete, a tktkey or a seed request, well formed.  For such a
 * read, FastPath.answer() does what the pure path (connection.py, attr.py,
 * protocol.py) does in a dozen Python calls: it splits the message, checks
 * that each attribute is the one expected, converts the values, counts the
 * request, answers it, writes the reply and records its latency.  It
 * answers as protocol.Tlsmgr does, with what Tlsmgr gives it: a cache
 * request by the cache's own lookup(), update() or delete(), its reply
 * joined from the parts that protocol.py makes (CACHE_REPLIES); tktkey and
 * seed by the same reply function of Tlsmgr that the pure path calls.
 *
 * It answers nothing it is not sure of.  Anything else (two messages, part
 * of one, an attribute out of place, a value the pure path would warn
 * about, a cache it was not given, a base64 or decimal text that is not
 * in its plainest form) makes answer() return False having done nothing,
 * and the pure path reads the same bytes from the start, with its warnings
 * and its replies.  tests/test_fastpath.py holds the two paths to the same
 * replies, counts and log lines.
 *
 * Hazards, for whoever changes this file:
 *   - every reply function may run any Python code, so nothing borrowed
 *     (a pointer into the data, a borrowed reference) is used after one;
 *   - it counts in C, and adds its counts into the objects it was given
 *     (the request counts, each request's histogram and its list of
 *     buckets) only when settle() is called: whoever reads those must call
 *     it first (stats.Stats.settle()), and whoever replaces one of them in
 *     Python must build a new FastPath.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

enum { LOOKUP, UPDATE, DELETE, TKTKEY, SEED, N_REQUESTS };

/* Answered by a cache's own method, which has the request's name. */
#define IS_CACHE_REQUEST(kind) ((kind) <= DELETE)

#define MAX_VALUES 3            /* update's cache_type, cache_id, session */
#define MAX_CACHES 8
#define MAX_BOUNDS 64
#define KEY_NAME_LENGTH 16      /* tickets.NAME_LENGTH */
#define SEED_MAX 255            /* protocol.SEED_MAX */

/* What each request reads after its name, in order (protocol.py's Wanted). */
static const struct shape {
    const char *request;
    int count;
    const char *names[MAX_VALUES];
} shapes[N_REQUESTS] = {
    [LOOKUP] = {"lookup", 2, {"cache_type", "cache_id"}},
    [UPDATE] = {"update", 3, {"cache_type", "cache_id", "session"}},
    [DELETE] = {"delete", 2, {"cache_type", "cache_id"}},
    [TKTKEY] = {"tktkey", 1, {"keyname"}},
    [SEED] = {"seed", 1, {"size"}},
};

typedef struct {
    const char *start;
    Py_ssize_t length;
} Text;

typedef struct {
    PyObject *name;             /* bytes, as the counts and the handler name it */
    /* What answers it: for a cache request, the name of the cache's method
     * (str); for the others, Tlsmgr's reply function; NULL: not answered here. */
    PyObject *reply;
    PyObject *histogram;        /* stats.Histogram of its latency */
    PyObject *buckets;          /* that histogram's list of counts */
    /* Counted here since the last settle(): a C addition costs nothing,
     * a Python int or float made anew for each request 1.5k instructions. */
    unsigned long long answered;
    unsigned long long observed[MAX_BOUNDS + 1];
    double seconds;
} Request;

/* The replies to cache requests, or their parts (protocol.CACHE_REPLIES). */
enum { FOUND, MISSED, DONE, NOT_DONE, N_CACHE_REPLIES };

typedef struct {
    PyObject_HEAD
    Py_ssize_t size_limit;
    PyObject *counts;           /* stats.requests: name -> int */
    PyObject *failure;          /* failure(name, exception) -> reply bytes */
    Request requests[N_REQUESTS];
    PyObject *cache_replies[N_CACHE_REPLIES];   /* bytes */
    int ncaches;
    PyObject *cache_types[MAX_CACHES];      /* bytes */
    PyObject *caches[MAX_CACHES];
    int nbounds;
    double bounds[MAX_BOUNDS];
} FastPath;

static PyObject *sum_name;      /* "sum", interned */

static const char base64_letters[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Two letters at a time, both ways: half as many lookups as one letter at
 * a time.  The encoder's table gives the two letters of each 12 bits; the
 * decoder's, indexed by two bytes (the first times 256), their 12 bits, or
 * -1 unless both are letters.  Filled from base64_letters at import; the
 * decoder's is 128 KiB of memory, of which lookups read some 12 (where
 * the 4096 pairs of letters are).  -1 rather than a 0 for "not letters",
 * which would leave the rest untouched, since the test for it would cost
 * four instructions a group more. */
static char base64_pairs[1 << 12][2];
static int16_t base64_pair_values[1 << 16];

static void
fill_base64_pairs(void)
{
    memset(base64_pair_values, 0xff, sizeof base64_pair_values);      /* -1 */
    for (int bits = 0; bits < 1 << 12; bits++) {
        unsigned char first = base64_letters[bits >> 6], second = base64_letters[bits & 63];
        base64_pairs[bits][0] = (char) first;
        base64_pairs[bits][1] = (char) second;
        base64_pair_values[first << 8 | second] = (int16_t) bits;
    }
}

/* Eight bytes read as one big-endian number (compilers make this one load). */
static inline uint64_t
big_endian_64(const unsigned char *in)
{
    return (uint64_t) in[0] << 56 | (uint64_t) in[1] << 48 | (uint64_t) in[2] << 40
        | (uint64_t) in[3] << 32 | (uint64_t) in[4] << 24 | (uint64_t) in[5] << 16
        | (uint64_t) in[6] << 8 | (uint64_t) in[7];
}

PyDoc_STRVAR(encode_base64_doc,
"encode_base64(data) -> bytes\n\n"
"Padded base64, without a newline: binascii.b2a_base64(data, newline=False),\n"
"two letters at a time rather than one (a session is hundreds of bytes,\n"
"encoded on every lookup that finds it).");

/* The length of the base64 text of length bytes; -1 (an exception set)
 * when that is more than memory can hold. */
static Py_ssize_t
base64_length(Py_ssize_t length)
{
    if (length > (PY_SSIZE_T_MAX - 2) / 4 * 3) {
        PyErr_NoMemory();
        return -1;
    }
    return (length + 2) / 3 * 4;
}

static void
base64_into(char *out, const unsigned char *in, Py_ssize_t length)
{
    Py_ssize_t i = 0;

    /* Six bytes at a time while eight can be read: the top 48 bits. */
    for (; i + 8 <= length; i += 6, out += 8) {
        uint64_t bits = big_endian_64(in + i);
        memcpy(out, base64_pairs[bits >> 52], 2);
        memcpy(out + 2, base64_pairs[bits >> 40 & 0xfff], 2);
        memcpy(out + 4, base64_pairs[bits >> 28 & 0xfff], 2);
        memcpy(out + 6, base64_pairs[bits >> 16 & 0xfff], 2);
    }
    for (; i + 2 < length; i += 3, out += 4) {
        unsigned long group = (unsigned long) in[i] << 16 | in[i + 1] << 8 | in[i + 2];
        memcpy(out, base64_pairs[group >> 12], 2);
        memcpy(out + 2, base64_pairs[group & 0xfff], 2);
    }
    if (i < length) {                       /* one or two bytes left */
        unsigned long group = (unsigned long) in[i] << 16
            | (i + 1 < length ? in[i + 1] << 8 : 0);
        out[0] = base64_letters[group >> 18];
        out[1] = base64_letters[group >> 12 & 63];
        out[2] = i + 1 < length ? base64_letters[group >> 6 & 63] : '=';
        out[3] = '=';
    }
}

static PyObject *
encode_base64(PyObject *Py_UNUSED(module), PyObject *data)
{
    Py_buffer view;

    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *encoded = NULL;
    Py_ssize_t length = base64_length(view.len);
    if (length >= 0 && (encoded = PyBytes_FromStringAndSize(NULL, length)) != NULL)
        base64_into(PyBytes_AS_STRING(encoded), view.buf, view.len);
    PyBuffer_Release(&view);
    return encoded;
}

/* One whole message of at most 1 + MAX_VALUES attributes, and nothing
 * after it: the request's name and its values, which must have the names
 * of the request's shape.  Returns the request, or -1. */
static int
split_request(const char *data, Py_ssize_t size, Text values[MAX_VALUES])
{
    const char *end = data + size, *p = data;
    Text names[1 + MAX_VALUES], texts[1 + MAX_VALUES];
    int count = 0;

    while (p < end && *p) {                 /* an empty name ends the message */
        if (count == 1 + MAX_VALUES)
            return -1;
        const char *nul = memchr(p, 0, end - p);
        if (nul == NULL)
            return -1;
        names[count] = (Text){p, nul - p};
        p = nul + 1;
        nul = memchr(p, 0, end - p);
        if (nul == NULL)
            return -1;
        texts[count++] = (Text){p, nul - p};
        p = nul + 1;
    }
    if (p != end - 1 || count == 0)         /* not whole, or more follows */
        return -1;
    if (names[0].length != 7 || memcmp(names[0].start, "request", 7))
        return -1;
    for (int kind = 0; kind < N_REQUESTS; kind++) {
        const struct shape *shape = &shapes[kind];
        if ((size_t) texts[0].length != strlen(shape->request)
            || memcmp(texts[0].start, shape->request, texts[0].length))
            continue;
        if (count != 1 + shape->count)
            return -1;
        for (int i = 0; i < shape->count; i++) {
            if ((size_t) names[i + 1].length != strlen(shape->names[i])
                || memcmp(names[i + 1].start, shape->names[i], names[i + 1].length))
                return -1;
            values[i] = texts[i + 1];
        }
        return kind;
    }
    return -1;
}

static const signed char base64_value[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7,
    ['H'] = 8, ['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14,
    ['O'] = 15, ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21,
    ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28,
    ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35,
    ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42,
    ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63,
    ['/'] = 64,
};                              /* each letter's value plus one; 0: not a letter */

/* Padded base64 in its plainest form (letters, then "=" or "==" at the
 * very end), decoded; NULL, without an exception, for any other text,
 * which attr.decode_data() reads (or refuses) as Postfix does. */
static PyObject *
decode_base64(Text text, int *malformed)
{
    const unsigned char *in = (const unsigned char *) text.start;
    Py_ssize_t length = text.length, padding = 0;

    *malformed = 1;
    if (length % 4)
        return NULL;
    if (length && in[length - 1] == '=')
        padding = in[length - 2] == '=' ? 2 : 1;
    PyObject *decoded = PyBytes_FromStringAndSize(NULL, length / 4 * 3 - padding);
    if (decoded == NULL) {
        *malformed = 0;
        return NULL;
    }
    unsigned char *out = (unsigned char *) PyBytes_AS_STRING(decoded);
    /* Checked as it is decoded, a group at a time: a pair's value is -1
     * unless both are letters (an "=" is not), so that one test covers the
     * group. */
    for (Py_ssize_t groups = length / 4 - (padding > 0); groups > 0; groups--) {
        int high = base64_pair_values[in[0] << 8 | in[1]],
            low = base64_pair_values[in[2] << 8 | in[3]];
        if ((high | low) < 0)
            goto not_base64;
        unsigned long group = (unsigned long) high << 12 | (unsigned long) low;
        out[0] = (unsigned char) (group >> 16);
        out[1] = (unsigned char) (group >> 8);
        out[2] = (unsigned char) group;
        in += 4;
        out += 3;
    }
    if (padding) {                           /* "=" counts as 0, like Postfix */
        int a = base64_value[in[0]] - 1, b = base64_value[in[1]] - 1,
            c = padding == 1 ? base64_value[in[2]] - 1 : 0;
        if ((a | b | c) < 0)
            goto not_base64;
        unsigned long group = (unsigned long) a << 18 | (unsigned long) b << 12
            | (unsigned long) c << 6;
        out[0] = (unsigned char) (group >> 16);
        if (padding == 1)
            out[1] = (unsigned char) (group >> 8);
    }
    return decoded;

not_base64:
    Py_DECREF(decoded);
    return NULL;
}

/* A seed size in its plainest form (1 to 255, no sign, space or leading
 * zero); 0 for any other text, which the pure path reads or warns about. */
static long
seed_size(Text text)
{
    long size = 0;

    if (text.length < 1 || text.length > 3 || text.start[0] == '0')
        return 0;
    for (Py_ssize_t i = 0; i < text.length; i++) {
        if (text.start[i] < '0' || text.start[i] > '9')
            return 0;
        size = size * 10 + (text.start[i] - '0');
    }
    return size <= SEED_MAX ? size : 0;
}

static PyObject *
find_cache(FastPath *self, Text type)
{
    for (int i = 0; i < self->ncaches; i++) {
        PyObject *name = self->cache_types[i];
        if (PyBytes_GET_SIZE(name) == type.length
            && !memcmp(PyBytes_AS_STRING(name), type.start, type.length))
            return self->caches[i];
    }
    return NULL;
}

/* The arguments of what answers the request (for a cache request, the
 * cache first: its method is called), and how many; or 0 (no exception)
 * when the pure path is to read it; -1 with an exception when memory ran
 * out. */
static int
arguments(FastPath *self, int kind, Text values[], PyObject *args[MAX_VALUES])
{
    int malformed;

    switch (kind) {
    case LOOKUP:
    case UPDATE:
    case DELETE:
        if ((args[0] = find_cache(self, values[0])) == NULL)
            return 0;
        Py_INCREF(args[0]);
        if ((args[1] = PyBytes_FromStringAndSize(values[1].start, values[1].length)) == NULL)
            return -1;
        if (kind != UPDATE)
            return 2;
        if ((args[2] = decode_base64(values[2], &malformed)) == NULL)
            return malformed ? 0 : -1;
        return 3;
    case TKTKEY:
        if ((args[0] = decode_base64(values[0], &malformed)) == NULL)
            return malformed ? 0 : -1;
        if (PyBytes_GET_SIZE(args[0]) && PyBytes_GET_SIZE(args[0]) != KEY_NAME_LENGTH)
            return 0;                        /* the pure path warns */
        return 1;
    case SEED: {
        long size = seed_size(values[0]);
        if (size == 0)
            return 0;
        return (args[0] = PyLong_FromLong(size)) == NULL ? -1 : 1;
    }
    }
    return 0;
}

/* As protocol.Tlsmgr.handle(): a reply function that raises an Exception
 * is answered by Tlsmgr.failure(), which logs it; anything else (a
 * SystemExit from the PRNG) goes on up. */
static PyObject *
failed(FastPath *self, PyObject *name)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *error = PyErr_GetRaisedException();
#else
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL)
        PyException_SetTraceback(error, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
#endif
    PyObject *reply = PyObject_CallFunctionObjArgs(self->failure, name, error, NULL);
    Py_DECREF(error);
    return reply;
}

/* The reply to a cache request, from what the cache's method returned:
 * for a lookup, the session found (found: the parts around its base64
 * text) or None (missed); for an update or a delete, whether it took. */
static PyObject *
cache_reply(FastPath *self, int kind, PyObject *result)
{
    if (kind != LOOKUP) {
        int done = PyObject_IsTrue(result);
        return done < 0 ? NULL : Py_NewRef(self->cache_replies[done ? DONE : NOT_DONE]);
    }
    if (result == Py_None)
        return Py_NewRef(self->cache_replies[MISSED]);
    if (!PyBytes_Check(result)) {
        PyErr_Format(PyExc_TypeError, "a cache lookup must give bytes, not %.100s",
                     Py_TYPE(result)->tp_name);
        return NULL;
    }
    PyObject *found = self->cache_replies[FOUND];
    Py_ssize_t prefix = PyBytes_GET_SIZE(found), text = base64_length(PyBytes_GET_SIZE(result));
    if (text < 0 || text > PY_SSIZE_T_MAX - prefix - 2) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *reply = PyBytes_FromStringAndSize(NULL, prefix + text + 2);
    if (reply == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(reply);
    memcpy(out, PyBytes_AS_STRING(found), prefix);
    base64_into(out + prefix, (const unsigned char *) PyBytes_AS_STRING(result),
                PyBytes_GET_SIZE(result));
    memcpy(out + prefix + text, "\0\0", 2);     /* the value's end, the message's */
    return reply;
}

/* The reply to a request of the kind, its arguments read. */
static PyObject *
reply_to(FastPath *self, int kind, PyObject *args[], int nargs)
{
    Request *request = &self->requests[kind];

    if (!IS_CACHE_REQUEST(kind))
        return PyObject_Vectorcall(request->reply, args, nargs, NULL);
    PyObject *result = PyObject_VectorcallMethod(request->reply, args, nargs, NULL);
    if (result == NULL)
        return NULL;
    PyObject *reply = cache_reply(self, kind, result);
    Py_DECREF(result);
    return reply;
}

/* stats.Stats.replied(), for one request, counted until settle(). */
static void
observe(FastPath *self, Request *request, double since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);   /* time.monotonic()'s clock */
    double seconds = (double) now.tv_sec + now.tv_nsec * 1e-9 - since;
    int bucket = 0;
    while (bucket < self->nbounds && self->bounds[bucket] < seconds)
        bucket++;                           /* bisect_left over 16 bounds */
    request->observed[bucket]++;
    request->seconds += seconds;
}

/* base + more, as a new int; a base of NULL counts as 0. */
static PyObject *
plus(PyObject *base, unsigned long long more)
{
    PyObject *addend = PyLong_FromUnsignedLongLong(more);
    if (addend == NULL || base == NULL)
        return addend;
    PyObject *sum = PyNumber_Add(base, addend);
    Py_DECREF(addend);
    return sum;
}

/* Add one request's counts into stats.Stats, and count anew from zero.
 * It runs no Python code, so that under the GIL it is whole to any
 * thread that reads the counts after it. */
static int
settle_request(FastPath *self, Request *request)
{
    if (request->answered) {
        PyObject *count = PyDict_GetItemWithError(self->counts, request->name);
        if (count == NULL && PyErr_Occurred())
            return -1;
        PyObject *more = plus(count, request->answered);
        if (more == NULL || PyDict_SetItem(self->counts, request->name, more) < 0) {
            Py_XDECREF(more);
            return -1;
        }
        Py_DECREF(more);
        request->answered = 0;
    }
    for (int bucket = 0; bucket <= self->nbounds; bucket++) {
        if (request->observed[bucket] == 0)
            continue;
        PyObject *more = plus(PyList_GET_ITEM(request->buckets, bucket),
                              request->observed[bucket]);
        if (more == NULL)
            return -1;
        PyList_SetItem(request->buckets, bucket, more);     /* drops the old count */
        request->observed[bucket] = 0;
    }
    if (request->seconds != 0.0) {
        PyObject *sum = PyObject_GetAttr(request->histogram, sum_name);
        if (sum == NULL)
            return -1;
        double total = PyFloat_AsDouble(sum);
        Py_DECREF(sum);
        if (total == -1.0 && PyErr_Occurred())
            return -1;
        PyObject *new_sum = PyFloat_FromDouble(total + request->seconds);
        if (new_sum == NULL)
            return -1;
        int status = PyObject_SetAttr(request->histogram, sum_name, new_sum);
        Py_DECREF(new_sum);
        if (status < 0)
            return -1;
        request->seconds = 0.0;
    }
    return 0;
}

PyDoc_STRVAR(settle_doc,
"settle()\n\n"
"Add the requests counted and timed here since the last settle() into\n"
"the counts and histograms given at the start.");

static PyObject *
FastPath_settle(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    for (int kind = 0; kind < N_REQUESTS; kind++) {
        if (self->requests[kind].reply != NULL
            && settle_request(self, &self->requests[kind]) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(answer_doc,
"answer(data, write, since) -> bool\n\n"
"If data is one whole request of those this path answers, answer it:\n"
"count it, write its reply with write(reply) and record its latency from\n"
"since (time.monotonic()); True.  Otherwise do nothing: False.");

static PyObject *
FastPath_answer(FastPath *self, PyObject *const *argv, Py_ssize_t argc)
{
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "answer() takes data, write and since");
        return NULL;
    }
    PyObject *data = argv[0], *write = argv[1];
    double since = PyFloat_AsDouble(argv[2]);
    if (since == -1.0 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) > self->size_limit)
        Py_RETURN_FALSE;

    Text values[MAX_VALUES];
    int kind = split_request(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), values);
    if (kind < 0 || self->requests[kind].reply == NULL)
        Py_RETURN_FALSE;
    Request *request = &self->requests[kind];

    PyObject *args[MAX_VALUES] = {NULL};
    int nargs = arguments(self, kind, values, args);
    PyObject *result = NULL, *reply = NULL;
    if (nargs <= 0) {
        if (nargs == 0)
            result = Py_NewRef(Py_False);
        goto done;
    }
    /* From here on, it is answered here. */
    request->answered++;
    reply = reply_to(self, kind, args, nargs);
    if (reply == NULL && (reply = failed(self, request->name)) == NULL)
        goto done;
    if (!PyBytes_Check(reply)) {
        PyErr_Format(PyExc_TypeError, "a %s reply must be bytes, not %.100s",
                     shapes[kind].request, Py_TYPE(reply)->tp_name);
        goto done;
    }
    PyObject *written = PyObject_CallOneArg(write, reply);
    if (written == NULL)
        goto done;
    Py_DECREF(written);
    observe(self, request, since);
    result = Py_NewRef(Py_True);
done:
    for (int i = 0; i < MAX_VALUES; i++)
        Py_XDECREF(args[i]);
    Py_XDECREF(reply);
    return result;
}

static int
FastPath_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->counts);
    Py_VISIT(self->failure);
    for (int i = 0; i < N_REQUESTS; i++) {
        Py_VISIT(self->requests[i].name);
        Py_VISIT(self->requests[i].reply);
        Py_VISIT(self->requests[i].histogram);
        Py_VISIT(self->requests[i].buckets);
    }
    for (int i = 0; i < N_CACHE_REPLIES; i++)
        Py_VISIT(self->cache_replies[i]);
    for (int i = 0; i < self->ncaches; i++) {
        Py_VISIT(self->cache_types[i]);
        Py_VISIT(self->caches[i]);
    }
    return 0;
}

static int
FastPath_clear(FastPath *self)
{
    Py_CLEAR(self->counts);
    Py_CLEAR(self->failure);
    for (int i = 0; i < N_REQUESTS; i++) {
        Py_CLEAR(self->requests[i].name);
        Py_CLEAR(self->requests[i].reply);
        Py_CLEAR(self->requests[i].histogram);
        Py_CLEAR(self->requests[i].buckets);
        self->requests[i].answered = 0;
        memset(self->requests[i].observed, 0, sizeof self->requests[i].observed);
        self->requests[i].seconds = 0.0;
    }
    for (int i = 0; i < N_CACHE_REPLIES; i++)
        Py_CLEAR(self->cache_replies[i]);
    for (int i = 0; i < self->ncaches; i++) {
        Py_CLEAR(self->cache_types[i]);
        Py_CLEAR(self->caches[i]);
    }
    self->ncaches = 0;
    return 0;
}

static void
FastPath_dealloc(FastPath *self)
{
    PyObject_GC_UnTrack(self);
    FastPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *) self);
}

static int
take_caches(FastPath *self, PyObject *caches)
{
    PyObject *type, *cache;
    Py_ssize_t position = 0;

    if (!PyDict_Check(caches)) {
        PyErr_SetString(PyExc_TypeError, "caches must be a dict");
        return -1;
    }
    if (PyDict_GET_SIZE(caches) > MAX_CACHES) {
        PyErr_Format(PyExc_ValueError, "at most %d caches", MAX_CACHES);
        return -1;
    }
    while (PyDict_Next(caches, &position, &type, &cache)) {
        if (!PyBytes_Check(type)) {
            PyErr_SetString(PyExc_TypeError, "cache types must be bytes");
            return -1;
        }
        self->cache_types[self->ncaches] = Py_NewRef(type);
        self->caches[self->ncaches++] = Py_NewRef(cache);
    }
    return 0;
}

static int
take_bounds(FastPath *self, PyObject *bounds)
{
    PyObject *sequence = PySequence_Fast(bounds, "bounds must be a sequence");
    if (sequence == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    int status = 0;
    if (count > MAX_BOUNDS) {
        PyErr_Format(PyExc_ValueError, "at most %d bounds", MAX_BOUNDS);
        status = -1;
    }
    for (Py_ssize_t i = 0; status == 0 && i < count; i++) {
        self->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(sequence, i));
        if (self->bounds[i] == -1.0 && PyErr_Occurred())
            status = -1;
    }
    self->nbounds = (int) count;
    Py_DECREF(sequence);
    return status;
}

static int
take_request(FastPath *self, int kind, PyObject *reply, PyObject *latency)
{
    Request *request = &self->requests[kind];
    PyObject *buckets_name = PyUnicode_FromString("counts");

    if (buckets_name == NULL)
        return -1;
    request->name = PyBytes_FromString(shapes[kind].request);
    request->reply = Py_NewRef(reply);
    if (request->name != NULL)
        request->histogram = PyObject_GetItem(latency, request->name);
    if (request->histogram != NULL)
        request->buckets = PyObject_GetAttr(request->histogram, buckets_name);
    Py_DECREF(buckets_name);
    if (request->buckets == NULL)
        return -1;
    if (!PyList_CheckExact(request->buckets)
        || PyList_GET_SIZE(request->buckets) != self->nbounds + 1) {
        PyErr_Format(PyExc_ValueError, "the %s histogram must have a list of %d counts",
                     shapes[kind].request, self->nbounds + 1);
        return -1;
    }
    return 0;
}

static int
take_cache_replies(FastPath *self, PyObject *replies)
{
    if (PyTuple_GET_SIZE(replies) != N_CACHE_REPLIES) {
        PyErr_Format(PyExc_ValueError, "cache_replies must be %d bytes", N_CACHE_REPLIES);
        return -1;
    }
    for (int i = 0; i < N_CACHE_REPLIES; i++) {
        PyObject *reply = PyTuple_GET_ITEM(replies, i);
        if (!PyBytes_Check(reply)) {
            PyErr_Format(PyExc_TypeError, "cache_replies must be %d bytes", N_CACHE_REPLIES);
            return -1;
        }
        self->cache_replies[i] = Py_NewRef(reply);
    }
    return 0;
}

static int
FastPath_init(FastPath *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"size_limit", "counts", "latency", "bounds", "caches",
                               "cache_replies", "replies", "failure", NULL};
    PyObject *counts, *latency, *bounds, *caches, *cache_replies, *replies, *failure;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nO!OOOO!O!O:FastPath", keywords,
                                     &self->size_limit, &PyDict_Type, &counts, &latency,
                                     &bounds, &caches, &PyTuple_Type, &cache_replies,
                                     &PyDict_Type, &replies, &failure))
        return -1;
    FastPath_clear(self);
    self->counts = Py_NewRef(counts);
    self->failure = Py_NewRef(failure);
    if (take_bounds(self, bounds) < 0 || take_caches(self, caches) < 0
        || take_cache_replies(self, cache_replies) < 0)
        return -1;
    for (int kind = 0; kind < N_REQUESTS; kind++) {
        PyObject *reply;
        if (IS_CACHE_REQUEST(kind)) {
            if (self->ncaches == 0)
                continue;
            /* The name of the cache's method (scache.py). */
            if ((reply = PyUnicode_InternFromString(shapes[kind].request)) == NULL)
                return -1;
        } else if ((reply = PyDict_GetItemString(replies, shapes[kind].request)) == NULL) {
            continue;
        } else {
            Py_INCREF(reply);
        }
        int status = take_request(self, kind, reply, latency);
        Py_DECREF(reply);
        if (status < 0)
            return -1;
    }
    return 0;
}

static PyMethodDef module_functions[] = {
    {"encode_base64", encode_base64, METH_O, encode_base64_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef FastPath_methods[] = {
    {"answer", (PyCFunction) (void (*)(void)) FastPath_answer, METH_FASTCALL, answer_doc},
    {"settle", (PyCFunction) FastPath_settle, METH_NOARGS, settle_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(FastPath_doc,
"FastPath(size_limit, counts, latency, bounds, caches, cache_replies, replies,\n"
"         failure)\n\n"
"The common requests answered in one call (see answer()).  counts and\n"
"latency are stats.Stats's requests and latency, which settle() adds\n"
"into, bounds its buckets'\n"
"upper bounds; caches maps the cache types answered here to their\n"
"SessionCache, whose lookup(), update() and delete() answer; cache_replies\n"
"is protocol.CACHE_REPLIES; replies maps tktkey and seed, if answered\n"
"here, to protocol.Tlsmgr's reply functions; failure is Tlsmgr.failure.");

static PyTypeObject FastPath_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlsmgr._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = FastPath_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc) FastPath_init,
    .tp_dealloc = (destructor) FastPath_dealloc,
    .tp_traverse = (traverseproc) FastPath_traverse,
    .tp_clear = (inquiry) FastPath_clear,
    .tp_methods = FastPath_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tlsmgr._fastpath",
    .m_doc = "The common tlsmgr requests answered in C (see fastpath.py).",
    .m_size = -1,
    .m_methods = module_functions,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&FastPath_type) < 0)
        return NULL;
    fill_base64_pairs();
    if ((sum_name = PyUnicode_InternFromString("sum")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FastPath", (PyObject *) &FastPath_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
