/*
 * _fastpath: the common requests, read, answered and counted in one call.
 *
 * A client of tlsmgr sends one request and waits for its reply, so that
 * nearly every read from a connection is one whole message: a lookup, an
 * update, a delete, a tktkey or a seed request, well formed.  For such a
 * read, FastPath.answer() does what the pure path (connection.py, attr.py,
 * protocol.py) does in a dozen Python calls: it splits the message, checks
 * that each attribute is the one expected, converts the values, counts the
 * request, answers it, writes the reply and records its latency.
 *
 * It knows no request of its own.  fastpath.py gives it, when it is made,
 * each request it may answer as the request table (requests.py) says it:
 * the request's name, its attributes' names in order and how each is read,
 * the handler that answers it (a cache's lookup(), update() or delete(),
 * given the cache first; ClientRequests' reply functions for tktkey and seed),
 * and how the handler's result becomes the reply, with the reply's parts,
 * which protocol.py makes; and the limits on values.
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
 *   - every handler may run any Python code, so nothing borrowed (a
 *     pointer into the data, a borrowed reference) is used after one;
 *   - it counts in C, and hands its counts to the settled() function it
 *     was given only when settle() is called: whoever reads the counts
 *     must call it first (stats.Stats.settle()).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_REQUESTS 8
#define MAX_VALUES 3            /* update's cache_type, cache_id, session */
#define MAX_CACHES 8
#define MAX_BOUNDS 64

/* How an attribute's text is read (fastpath.py derives these from the
 * request table): the name of a cache, given to the handler as the cache
 * itself; a string; base64 data; base64 of a ticket key's name (none, or
 * key_name_length bytes); a decimal size from 1 to seed_max. */
enum { CACHE_TYPE = 'c', STRING = 's', DATA = 'd', KEY_NAME = 'k', SIZE = 'n' };

static int
known_code(char code)
{
    switch (code) {
    case CACHE_TYPE:
    case STRING:
    case DATA:
    case KEY_NAME:
    case SIZE:
        return 1;
    }
    return 0;
}

/* How the handler's result becomes the reply: it is the reply; a session
 * or None (the parts around its base64 text, or the reply without one);
 * whether it took (the reply if so, the reply if not). */
enum { AS_IS = 'r', SESSION = 'd', TRUTH = 't' };

typedef struct {
    const char *start;
    Py_ssize_t length;
} Text;

typedef struct {
    PyObject *name;             /* bytes, as the counts name it */
    int count;                  /* attributes after the name */
    PyObject *names[MAX_VALUES];    /* bytes */
    char codes[MAX_VALUES];     /* how each is read */
    char reply_kind;
    PyObject *handler;
    PyObject *replies[2];       /* bytes: the reply parts, for SESSION and TRUTH */
    /* Counted here since the last settle(): a C addition costs nothing,
     * a Python int or float made anew for each request 1.5k instructions. */
    unsigned long long answered;
    unsigned long long observed[MAX_BOUNDS + 1];
    double seconds;
} Request;

typedef struct {
    PyObject_HEAD
    Py_ssize_t size_limit;
    long key_name_length;
    long seed_max;
    PyObject *settled;          /* settled(name, answered, observed, seconds) */
    PyObject *failure;          /* failure(name, exception) -> reply bytes */
    int nrequests;
    Request requests[MAX_REQUESTS];
    int ncaches;
    PyObject *cache_types[MAX_CACHES];      /* bytes */
    PyObject *caches[MAX_CACHES];
    int nbounds;
    double bounds[MAX_BOUNDS];
} FastPath;

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

/* Whether a text is the bytes object's. */
static inline int
same(Text text, PyObject *bytes)
{
    return text.length == PyBytes_GET_SIZE(bytes)
        && !memcmp(text.start, PyBytes_AS_STRING(bytes), text.length);
}

/* One whole message of at most 1 + MAX_VALUES attributes, and nothing
 * after it: the request's name and its values, which must have the names
 * the request was given.  Returns the request, or NULL. */
static Request *
split_request(FastPath *self, const char *data, Py_ssize_t size, Text values[MAX_VALUES])
{
    const char *end = data + size, *p = data;
    Text names[1 + MAX_VALUES], texts[1 + MAX_VALUES];
    int count = 0;

    while (p < end && *p) {                 /* an empty name ends the message */
        if (count == 1 + MAX_VALUES)
            return NULL;
        const char *nul = memchr(p, 0, end - p);
        if (nul == NULL)
            return NULL;
        names[count] = (Text){p, nul - p};
        p = nul + 1;
        nul = memchr(p, 0, end - p);
        if (nul == NULL)
            return NULL;
        texts[count++] = (Text){p, nul - p};
        p = nul + 1;
    }
    if (p != end - 1 || count == 0)         /* not whole, or more follows */
        return NULL;
    if (names[0].length != 7 || memcmp(names[0].start, "request", 7))
        return NULL;
    for (int index = 0; index < self->nrequests; index++) {
        Request *request = &self->requests[index];
        if (!same(texts[0], request->name))
            continue;
        if (count != 1 + request->count)
            return NULL;
        for (int i = 0; i < request->count; i++) {
            if (!same(names[i + 1], request->names[i]))
                return NULL;
            values[i] = texts[i + 1];
        }
        return request;
    }
    return NULL;
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


/* A size in its plainest form (1 to max, no sign, space or leading zero);
 * 0 for any other text, which the pure path reads or warns about. */
static long
plain_size(Text text, long max)
{
    long size = 0;

    if (text.length < 1 || text.start[0] == '0')
        return 0;
    for (Py_ssize_t i = 0; i < text.length; i++) {
        if (text.start[i] < '0' || text.start[i] > '9')
            return 0;
        size = size * 10 + (text.start[i] - '0');
        if (size > max)
            return 0;
    }
    return size;
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

/* The handler's arguments, read from the values as the request's codes
 * say, and how many; or 0 (no exception) when the pure path is to read
 * it; -1 with an exception when memory ran out. */
static int
arguments(FastPath *self, Request *request, Text values[], PyObject *args[MAX_VALUES])
{
    int malformed;

    for (int i = 0; i < request->count; i++) {
        switch (request->codes[i]) {
        case CACHE_TYPE:
            if ((args[i] = find_cache(self, values[i])) == NULL)
                return 0;
            Py_INCREF(args[i]);
            break;
        case STRING:
            if ((args[i] = PyBytes_FromStringAndSize(values[i].start, values[i].length)) == NULL)
                return -1;
            break;
        case DATA:
        case KEY_NAME:
            if ((args[i] = decode_base64(values[i], &malformed)) == NULL)
                return malformed ? 0 : -1;
            if (request->codes[i] == KEY_NAME && PyBytes_GET_SIZE(args[i])
                && PyBytes_GET_SIZE(args[i]) != self->key_name_length)
                return 0;                   /* the pure path warns */
            break;
        case SIZE: {
            long size = plain_size(values[i], self->seed_max);
            if (size == 0)
                return 0;
            if ((args[i] = PyLong_FromLong(size)) == NULL)
                return -1;
            break;
        }
        default:
            return 0;
        }
    }
    return request->count;
}

/* As protocol.Dispatch.handle(): a reply function that raises an Exception
 * is answered by Dispatch.failure(), which logs it; anything else (a
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

/* The reply with a session: the parts around its base64 text (the first
 * of the request's replies), or the reply without one (the second). */
static PyObject *
session_reply(Request *request, PyObject *result)
{
    if (result == Py_None)
        return Py_NewRef(request->replies[1]);
    if (!PyBytes_Check(result)) {
        PyErr_Format(PyExc_TypeError, "a %s handler must give bytes or None, not %.100s",
                     PyBytes_AS_STRING(request->name), Py_TYPE(result)->tp_name);
        return NULL;
    }
    PyObject *found = request->replies[0];
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

/* The reply to a request, its arguments read: what its handler gives,
 * made a reply as the request says. */
static PyObject *
reply_to(Request *request, PyObject *args[], int nargs)
{
    PyObject *result = PyObject_Vectorcall(request->handler, args, nargs, NULL);
    if (result == NULL || request->reply_kind == AS_IS)
        return result;
    PyObject *reply;
    if (request->reply_kind == SESSION) {
        reply = session_reply(request, result);
    } else {
        int done = PyObject_IsTrue(result);
        reply = done < 0 ? NULL : Py_NewRef(request->replies[done ? 0 : 1]);
    }
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

/* Hand one request's counts to settled(), and count anew from zero. */
static int
settle_request(FastPath *self, Request *request)
{
    if (request->answered == 0)
        return 0;                           /* nothing observed either */
    PyObject *observed = PyList_New(self->nbounds + 1);
    if (observed == NULL)
        return -1;
    for (int bucket = 0; bucket <= self->nbounds; bucket++) {
        PyObject *count = PyLong_FromUnsignedLongLong(request->observed[bucket]);
        if (count == NULL) {
            Py_DECREF(observed);
            return -1;
        }
        PyList_SET_ITEM(observed, bucket, count);
    }
    PyObject *answered = PyLong_FromUnsignedLongLong(request->answered);
    PyObject *seconds = PyFloat_FromDouble(request->seconds);
    PyObject *done = NULL;
    if (answered != NULL && seconds != NULL)
        done = PyObject_CallFunctionObjArgs(self->settled, request->name, answered, observed,
                                            seconds, NULL);
    Py_XDECREF(answered);
    Py_XDECREF(seconds);
    Py_DECREF(observed);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    request->answered = 0;
    memset(request->observed, 0, sizeof request->observed);
    request->seconds = 0.0;
    return 0;
}

PyDoc_STRVAR(settle_doc,
"settle()\n\n"
"Hand the requests counted and timed here since the last settle() to\n"
"settled(name, answered, observed, seconds), request by request.");

static PyObject *
FastPath_settle(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    for (int index = 0; index < self->nrequests; index++) {
        if (settle_request(self, &self->requests[index]) < 0)
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
    Request *request = split_request(self, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                                     values);
    if (request == NULL)
        Py_RETURN_FALSE;

    PyObject *args[MAX_VALUES] = {NULL};
    int nargs = arguments(self, request, values, args);
    PyObject *result = NULL, *reply = NULL;
    if (nargs <= 0) {
        if (nargs == 0)
            result = Py_NewRef(Py_False);
        goto done;
    }
    /* From here on, it is answered here. */
    request->answered++;
    reply = reply_to(request, args, nargs);
    if (reply == NULL && (reply = failed(self, request->name)) == NULL)
        goto done;
    if (!PyBytes_Check(reply)) {
        PyErr_Format(PyExc_TypeError, "a %s reply must be bytes, not %.100s",
                     PyBytes_AS_STRING(request->name), Py_TYPE(reply)->tp_name);
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
    Py_VISIT(self->settled);
    Py_VISIT(self->failure);
    for (int index = 0; index < self->nrequests; index++) {
        Request *request = &self->requests[index];
        Py_VISIT(request->name);
        for (int i = 0; i < request->count; i++)
            Py_VISIT(request->names[i]);
        Py_VISIT(request->handler);
        Py_VISIT(request->replies[0]);
        Py_VISIT(request->replies[1]);
    }
    for (int i = 0; i < self->ncaches; i++) {
        Py_VISIT(self->cache_types[i]);
        Py_VISIT(self->caches[i]);
    }
    return 0;
}

static int
FastPath_clear(FastPath *self)
{
    Py_CLEAR(self->settled);
    Py_CLEAR(self->failure);
    for (int index = 0; index < self->nrequests; index++) {
        Request *request = &self->requests[index];
        Py_CLEAR(request->name);
        for (int i = 0; i < request->count; i++)
            Py_CLEAR(request->names[i]);
        Py_CLEAR(request->handler);
        Py_CLEAR(request->replies[0]);
        Py_CLEAR(request->replies[1]);
    }
    memset(self->requests, 0, sizeof self->requests);
    self->nrequests = 0;
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

/* One request as fastpath.py gives it: (name, names, codes, reply_kind,
 * handler, replies), each checked, for a mistake there must fail when the
 * daemon starts, not at a request. */
static int
take_request(FastPath *self, PyObject *given)
{
    PyObject *name, *names, *codes, *handler, *replies = NULL;
    int reply_kind;

    if (!PyArg_ParseTuple(given, "O!O!O!CO|O!:request", &PyBytes_Type, &name,
                          &PyTuple_Type, &names, &PyBytes_Type, &codes, &reply_kind,
                          &handler, &PyTuple_Type, &replies))
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    if (count < 1 || count > MAX_VALUES || PyBytes_GET_SIZE(codes) != count) {
        PyErr_Format(PyExc_ValueError, "request %s: 1 to %d attributes, a code each",
                     PyBytes_AS_STRING(name), MAX_VALUES);
        return -1;
    }
    Py_ssize_t parts = reply_kind == AS_IS ? 0 : 2;
    if ((reply_kind != AS_IS && reply_kind != SESSION && reply_kind != TRUTH)
        || (replies == NULL ? 0 : PyTuple_GET_SIZE(replies)) != parts) {
        PyErr_Format(PyExc_ValueError, "request %s: a reply kind of %c (no reply parts), "
                     "%c or %c (two)", PyBytes_AS_STRING(name), AS_IS, SESSION, TRUTH);
        return -1;
    }
    Request *request = &self->requests[self->nrequests++];
    request->name = Py_NewRef(name);
    request->count = (int) count;
    request->reply_kind = (char) reply_kind;
    request->handler = Py_NewRef(handler);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *attribute = PyTuple_GET_ITEM(names, i);
        char code = PyBytes_AS_STRING(codes)[i];
        if (!PyBytes_Check(attribute) || !known_code(code)) {
            PyErr_Format(PyExc_ValueError, "request %s: attribute names must be bytes, "
                         "codes of c, s, d, k or n", PyBytes_AS_STRING(name));
            return -1;
        }
        request->names[i] = Py_NewRef(attribute);
        request->codes[i] = code;
    }
    for (Py_ssize_t i = 0; i < parts; i++) {
        PyObject *part = PyTuple_GET_ITEM(replies, i);
        if (!PyBytes_Check(part)) {
            PyErr_Format(PyExc_TypeError, "request %s: reply parts must be bytes",
                         PyBytes_AS_STRING(name));
            return -1;
        }
        request->replies[i] = Py_NewRef(part);
    }
    return 0;
}

static int
FastPath_init(FastPath *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"size_limit", "requests", "caches", "bounds",
                               "key_name_length", "seed_max", "settled", "failure", NULL};
    PyObject *requests, *caches, *bounds, *settled, *failure;
    Py_ssize_t size_limit;
    long key_name_length, seed_max;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nO!OOllOO:FastPath", keywords,
                                     &size_limit, &PyTuple_Type, &requests, &caches, &bounds,
                                     &key_name_length, &seed_max, &settled, &failure))
        return -1;
    FastPath_clear(self);
    self->size_limit = size_limit;
    self->key_name_length = key_name_length;
    self->seed_max = seed_max;
    self->settled = Py_NewRef(settled);
    self->failure = Py_NewRef(failure);
    if (PyTuple_GET_SIZE(requests) > MAX_REQUESTS) {
        PyErr_Format(PyExc_ValueError, "at most %d requests", MAX_REQUESTS);
        return -1;
    }
    if (take_bounds(self, bounds) < 0 || take_caches(self, caches) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(requests); i++) {
        if (take_request(self, PyTuple_GET_ITEM(requests, i)) < 0)
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
"FastPath(size_limit, requests, caches, bounds, key_name_length, seed_max,\n"
"         settled, failure)\n\n"
"The requests given answered in one call each (see answer()).  requests\n"
"is a tuple of (name, attribute names, codes, reply kind, handler[, reply\n"
"parts]) (fastpath.py makes them from the request table); caches maps\n"
"the cache types answered here to their SessionCache, passed to the\n"
"handler in place of a cache type; bounds are the latency buckets' upper\n"
"bounds; settled(name, answered, observed, seconds) takes the counts at\n"
"settle(); failure(name, exception) gives the reply to a handler that\n"
"raised.");

static PyTypeObject FastPath_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlsmgr.service._fastpath.FastPath",
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
    .m_name = "tlsmgr.service._fastpath",
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
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FastPath", (PyObject *) &FastPath_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
