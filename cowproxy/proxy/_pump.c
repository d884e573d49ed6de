/*
 * cowproxy.proxy._pump: the steady state of sessions (pass-through ones, and gated ones
 * between statements), relayed by one native thread (see proxy/pump.py for how sessions
 * hand themselves over and back).
 *
 * Why: every byte a pass-through session relays is forwarded unchanged; what the proxy
 * adds per request is a walk of the frame headers (ReadyForQuery counting, statement
 * counts, the latency split). In CPython with uvloop that walk is cheap, but the event
 * loop and interpreter around each read and write cost a few microseconds of CPU per
 * transaction more than pgbouncer (README, "What limits it"). Here a thread with its
 * own epoll does the reads, walks and writes without the interpreter or the GIL.
 *
 * The rule that keeps it small: the thread does only the plain cases and gives the
 * session back to Python (the "hand-back") for anything else, untouched:
 *   - a client chunk is forwarded only if it is whole frames of the types in
 *     `client_native` (Query, Parse, Bind, Execute, Describe, Sync, Close, Flush) with
 *     valid lengths; otherwise the whole chunk goes back unforwarded, and Python's relay
 *     sees exactly the bytes it would have seen. A *gated* link (a session whose
 *     statement gate must see every Query and Parse: branches, production) forwards the
 *     types in `client_gated` only (no Query, no Parse), and only while its *epoch* (the
 *     branch's layout version, which Python sets with `set_epoch`) is the one it was
 *     attached under: a new overlay means the gate must resynchronise plans first;
 *   - a server chunk is forwarded up to the first message whose type is in
 *     `upstream_special` (ErrorResponse, CopyInResponse); the rest goes back starting at
 *     that message's first byte, so Python's scanner starts on a message boundary;
 *   - end of stream, a socket error and a server message with an impossible length end
 *     the link too (Python then meets the condition itself, as it would have).
 *   - a gated link with *stand-ins* (a branch session's simple Queries whose literal
 *     shape its gate already sends as a Bind of a statement prepared for the shape,
 *     proxy/autoprepare.py `fast_query`) serves a lone Query of such a shape itself: the
 *     same Bind/Describe/Execute/Sync, and the BindComplete removed from the answer. A
 *     text the thread cannot vouch for (not `plain_numbers`, a number that is not an
 *     int4 as written, an unknown shape) goes back like any other Query; so does the
 *     answer from its first message other than BindComplete while that is owed
 *     (`bind_owed`), and Python's response editor removes it then;
 *   - a gated link whose gate prepared statements for `Parse ""` texts (autoprepare.py:
 *     a driver that sends Parse, Bind, Execute, Sync for every statement) forwards a
 *     chunk with a `Parse ""` of such a text as the gate does: the Parse as the empty
 *     statement, the Binds and Describes of statement "" naming the gate's statement
 *     (`unnamed_chunk`); a `Parse ""` of a text the gate forwards as sent goes so (BEGIN,
 *     reads of unchanged tables); any other Parse goes back;
 * The state the relay keeps (ReadyForQuery owed, extended-protocol and COPY
 * bookkeeping, the request's timing) moves in with `attach` and out with `detach`, so
 * Python's `Relay` carries on where the thread stopped.
 *
 * Backpressure: a write that would block keeps its rest in the link and stops reading
 * the side that produced it until the rest is written (at most one read of data held).
 *
 * Concurrency: one mutex. The thread holds it while it acts on a batch of epoll events
 * and releases it while it waits; Python takes it for attach, detach and reading the
 * counters. The thread never touches a Python object.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define MAX_EVENTS 64
#define MAX_SLOTS 4096
#define MAX_BUCKETS 64
#define WAKE_TOKEN UINT64_MAX
#define MAX_NUMBERS 64          /* numbers in a stand-in's text */
#define MAX_SHAPE 16384         /* bytes of a stand-in's text */
#define PLAIN_OPERATOR_RUN 62   /* sql/literals.py _PLAIN_OPERATOR_RUN */
#define OUT_SIZE (2 * MAX_SHAPE + 4096)
#define KIND_KEEP 0             /* sql/numbers.py KEEP, PARAM, NEGATED */
#define KIND_PARAM 1
#define KIND_NEGATED 2

#define VERB_SIZE 32            /* a tag edit's verb and its zero byte (responses.py TagEdit) */
#define MAX_EDITED_TAG 64       /* longer tags are left to Python's editor */
#define TAG_GROWTH 128          /* bytes an edited CommandComplete may grow by (verb, " 0 ", count) */

#define ALIAS_SIZE 64           /* a server statement's name and its zero byte (NAMEDATALEN) */

#define OWES_READY 1
#define IS_STATEMENT 2

/* Why a link went back to Python (proxy/pump.py has the same numbers, BACK_*). */
enum { ATTACHED = 0, BACK_CLIENT_DATA = 1, BACK_UPSTREAM_DATA = 2, BACK_CLOSED = 3, BACK_UPSTREAM_INVALID = 4 };

typedef struct {
    char *data;
    size_t len;
    size_t off;
} Pending;

/* One number of the text a stand-in's statement was prepared from. */
typedef struct {
    int source;                /* >= 0: the client's number at that index; -1: `text` is the number */
    int kind;                  /* KIND_*: KEEP numbers stay literal in the statement */
    char *text;                /* KEEP: the number it was prepared with; source -1: the number */
    size_t text_len;
} SentNumber;

/* A literal shape of the client's text and the statement that serves it. */
typedef struct Standin {
    struct Standin *next;      /* same bucket */
    uint64_t hash;
    char *shape;               /* the client's text with each number written 0 (numbers.blanked) */
    size_t shape_len;
    int nclient;               /* numbers in the client's text */
    int nsent;
    SentNumber *sent;          /* the numbers of the text the statement was prepared from, in order */
    char *head;                /* the Bind's body before its values (portal, statement, formats, count) */
    size_t head_len;
    char *tail;                /* after them: result formats, then [Describe P] Execute Sync */
    size_t tail_len;
    int slot;                  /* statement counter of its kind, or -1 */
    char verb[VERB_SIZE];      /* the tag edit its answer needs ("": none) */
} Standin;

/* A prepared statement whose executions answer with another command tag (an UPDATE sent
   as an upsert answers INSERT): the verb the client must see (responses.py `_statements`). */
typedef struct {
    char *name;                /* the statement's name as sent, without its zero byte */
    size_t name_len;
    char verb[VERB_SIZE];
} StatementEdit;

/* A simple Query text the gate forwards as sent (gate.py `forwards`: BEGIN, COMMIT, SET ...). */
typedef struct {
    uint64_t hash;
    char *text;                /* the Query's body: the text and its zero byte */
    size_t len;
    int slot;                  /* statement counter of its kind, or -1 */
} Verbatim;

/* A `Parse ""` text the gate prepared under a name of its own (autoprepare.py `parse`),
   or forwards as sent. */
typedef struct {
    uint64_t hash;
    char *body;                /* the Parse's body after its name: the text, its zero byte, the parameter types */
    size_t len;
    char alias[ALIAS_SIZE];    /* the server statement: its name and zero byte */
    size_t alias_len;          /* with the zero byte; 0: the Parse goes as sent */
    int slot;                  /* statement counter of its kind, or -1 */
    char verb[VERB_SIZE];      /* the tag edit its executions' answers need ("": none) */
} ParseAlias;

/* A session's stand-ins (immutable once made; Python keeps it alive while a link uses it). */
typedef struct {
    PyObject_HEAD
    Standin **buckets;
    size_t nbuckets;           /* a power of two */
    Py_ssize_t count;
    StatementEdit *edits;      /* the session's prepared statements with a tag edit */
    int nedits;
    Verbatim *verbatim;        /* the texts its gate forwards as sent */
    int nverbatim;
    ParseAlias *parses;        /* the `Parse ""` texts its gate prepared or forwards as sent */
    int nparses;
    int parse_edits;           /* how many of them have a tag edit */
} Standins;

typedef struct {
    uint32_t gen;
    int in_use;
    int state;                 /* ATTACHED or a BACK_* reason */
    int client_fd, upstream_fd;
    int slot;                  /* statement counter, or -1: the gate counts (gated links) */
    int gated;                 /* forward `client_gated` types only */
    int epoch;                 /* -1, or the epoch this link's chunks depend on ... */
    unsigned long long epoch_value;  /* ... and its value when the link was attached */
    unsigned long long chunks;       /* client chunks forwarded since the link was attached */
    Standins *standins;        /* a gated link's stand-ins, or NULL */
    int bind_owed;             /* a stand-in's BindComplete is still to come (and to remove) */
    char edit_owed[VERB_SIZE]; /* the answer in flight's CommandComplete gets this verb ("": none) */
    char portal_edit[VERB_SIZE];  /* the verb of the statement bound to the unnamed portal ("": none) */
    char alias[ALIAS_SIZE];    /* the server statement the client's unnamed statement is (autoprepare.py `alias`) */
    size_t alias_len;          /* with its zero byte; 0: none */
    int unnamed_parsed;        /* a `Parse ""` went upstream since the last Query (autoprepare.py) */
    char unnamed_edit[VERB_SIZE];  /* the tag edit of the client's unnamed statement ("": none) */
    uint32_t client_mask, upstream_mask;
    /* the relay's state (proxy/relay.py, same names) */
    long long pending_ready;
    int mid_extended;
    long long copy_syncs;
    int copy_end_sent;
    int tx_status;
    int cycle_failed;
    int failed_since_idle;
    int statement_gone;
    double cycle_start;
    double proxy_time;
    /* where the server stream stands between chunks */
    uint32_t skip;             /* body bytes of the current message still to come */
    unsigned char head[6];     /* a header cut by a chunk's end (6: ReadyForQuery's status) */
    int head_len;
    /* bytes a write could not take yet */
    Pending to_client, to_upstream;
    /* what goes back to Python */
    char *tail;
    size_t tail_len;
    char invalid[96];
} Link;

typedef struct {
    unsigned long long bins[MAX_BUCKETS + 1];
    double total;
    unsigned long long count;
} Latency;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    int epfd, wakefd, notifyfd;
    int stopping;
    unsigned char client_native[256];
    unsigned char client_gated[256];
    unsigned char upstream_special[256];
    unsigned long long max_message_size;
    double bounds[MAX_BUCKETS];
    int nbounds;
    Link **links;
    int nlinks, cap;
    int *back;                 /* link indexes handed back, not yet reported */
    int nback, back_cap;
    int notify_due;
    unsigned long long statements[MAX_SLOTS];
    int nslots;
    unsigned long long epochs[MAX_SLOTS];
    int nepochs;
    Latency latency[2];        /* 0: proxy, 1: upstream */
    unsigned long long handbacks[5];
    unsigned long long standins_served;
    char *scratch;
    char *out;                 /* a stand-in's messages */
    char *renamed;             /* a client chunk with auto-prepare's renames */
    size_t renamed_cap;
    unsigned char shape[MAX_SHAPE];
} Pump;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint64_t token(int index, uint32_t gen, int upstream) {
    return ((uint64_t)gen << 32) | ((uint64_t)(uint32_t)index << 1) | (uint64_t)(upstream ? 1 : 0);
}

static void observe(Latency *h, const double *bounds, int nbounds, double seconds) {
    int i = 0;
    while (i < nbounds && seconds > bounds[i])
        i++;
    h->bins[i]++;
    h->total += seconds;
    h->count++;
}

/* responses.py `edited_tag`: the tag `tag` (len bytes, no zero byte) as `verb` would have
   reported the same row count, in `out` (room for VERB_SIZE + 3 + len bytes); its length. */
static size_t edited_tag(const char *tag, size_t len, const char *verb, char *out) {
    size_t start = len;
    while (start > 0 && tag[start - 1] != ' ')
        start--;
    const char *rows = "0";
    size_t rows_len = 1;
    if (start > 0 && start < len) {
        size_t k = start;
        while (k < len && tag[k] >= '0' && tag[k] <= '9')
            k++;
        if (k == len) {
            rows = tag + start;
            rows_len = len - start;
        }
    }
    size_t verb_len = strlen(verb), pos = 0;
    memcpy(out, verb, verb_len);
    pos = verb_len;
    int insert = strcmp(verb, "INSERT") == 0, counted = insert;
    static const char *const row_count_verbs[] = {"UPDATE", "DELETE", "MERGE", "SELECT", "MOVE", "FETCH", "COPY"};
    for (size_t i = 0; !counted && i < sizeof row_count_verbs / sizeof row_count_verbs[0]; i++)
        counted = strcmp(verb, row_count_verbs[i]) == 0;
    if (!counted)
        return pos;
    if (insert) {
        memcpy(out + pos, " 0", 2);
        pos += 2;
    }
    out[pos++] = ' ';
    memcpy(out + pos, rows, rows_len);
    return pos + rows_len;
}

/* ------------------------------------------------------------------ hand-back */

static void set_masks(Pump *p, int index, Link *l);

static void hand_back(Pump *p, int index, Link *l, int reason) {
    if (l->state != ATTACHED)
        return;
    l->state = reason;
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, l->client_fd, NULL);
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, l->upstream_fd, NULL);
    if (p->nback == p->back_cap) {
        int cap = p->back_cap ? p->back_cap * 2 : 64;
        int *grown = realloc(p->back, sizeof(int) * (size_t)cap);
        if (grown == NULL)
            abort();
        p->back = grown;
        p->back_cap = cap;
    }
    p->back[p->nback++] = index;
    p->handbacks[reason]++;
    p->notify_due = 1;
}

static int keep_tail(Link *l, const char *data, size_t len) {
    l->tail = malloc(len ? len : 1);
    if (l->tail == NULL)
        return -1;
    memcpy(l->tail, data, len);
    l->tail_len = len;
    return 0;
}

/* ------------------------------------------------------------------ writes */

/* Write `data` to `fd`; keep what the socket does not take in `pending`.
   0: all written or kept; -1: the socket failed (the rest is kept for Python). */
static int send_or_keep(int fd, Pending *pending, const char *data, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, data + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        int failed = !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        size_t rest = len - done;
        char *copy = malloc(rest);
        if (copy == NULL)
            abort();
        memcpy(copy, data + done, rest);
        pending->data = copy;
        pending->len = rest;
        pending->off = 0;
        return failed ? -1 : 0;
    }
    return 0;
}

/* Write what `pending` holds. 0: progress or would block; -1: the socket failed. */
static int flush(int fd, Pending *pending) {
    while (pending->off < pending->len) {
        ssize_t n = send(fd, pending->data + pending->off, pending->len - pending->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            pending->off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return -1;
    }
    free(pending->data);
    pending->data = NULL;
    pending->len = pending->off = 0;
    return 0;
}

static void set_masks(Pump *p, int index, Link *l) {
    uint32_t client = (l->to_upstream.data ? 0 : EPOLLIN) | (l->to_client.data ? EPOLLOUT : 0);
    uint32_t upstream = (l->to_client.data ? 0 : EPOLLIN) | (l->to_upstream.data ? EPOLLOUT : 0);
    struct epoll_event ev;
    if (client != l->client_mask) {
        ev.events = client;
        ev.data.u64 = token(index, l->gen, 0);
        epoll_ctl(p->epfd, EPOLL_CTL_MOD, l->client_fd, &ev);
        l->client_mask = client;
    }
    if (upstream != l->upstream_mask) {
        ev.events = upstream;
        ev.data.u64 = token(index, l->gen, 1);
        epoll_ctl(p->epfd, EPOLL_CTL_MOD, l->upstream_fd, &ev);
        l->upstream_mask = upstream;
    }
}

/* ------------------------------------------------------------------ client → upstream */

/* Relay.note for the frame types the thread forwards. */
static int note(Link *l, unsigned char type) {
    switch (type) {
    case 'Q':
        l->mid_extended = 0;
        l->copy_syncs = 0;
        l->copy_end_sent = 0;
        return OWES_READY | IS_STATEMENT;
    case 'S':
        l->mid_extended = 0;
        if (!l->copy_end_sent)
            l->copy_syncs++;
        return OWES_READY;
    case 'E':
        l->mid_extended = 1;
        l->copy_syncs = 0;
        l->copy_end_sent = 0;
        return IS_STATEMENT;
    case 'P': case 'B': case 'D': case 'C':
        l->mid_extended = 1;
        return 0;
    default:
        return 0;
    }
}

/* Whether the chunk is whole frames the thread forwards, for this link: 0 if not; 2 if
   they include a Parse (a gated link's, of a text its gate may have prepared: see
   `unnamed_chunk`), else 1. */
static int plain_client_chunk(Pump *p, Link *l, const unsigned char *buf, size_t n) {
    const unsigned char *types = l->gated ? p->client_gated : p->client_native;
    int parses = l->gated && l->standins != NULL && l->standins->nparses > 0, parsed = 0;
    if (l->bind_owed || l->edit_owed[0] || (l->epoch >= 0 && p->epochs[l->epoch] != l->epoch_value))
        return 0;
    size_t pos = 0;
    while (pos < n) {
        if (n - pos < 5)
            return 0;
        uint32_t length = be32(buf + pos + 1);
        if (!(types[buf[pos]] || (parses && buf[pos] == 'P')) || length < 4 || length > p->max_message_size)
            return 0;
        if ((uint64_t)length + 1 > n - pos)
            return 0;
        parsed |= parses && buf[pos] == 'P';
        pos += (size_t)length + 1;
    }
    return parsed ? 2 : 1;
}

/* ------------------------------------------------------------------ stand-ins */

static int is_letter(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

/* sql/literals.py `_plain_number_spans` over bytes: the numbers of a text made only of
   ASCII letters, digits, `_`, whitespace, `,;:()[]` and short operator runs that start no
   comment, its numbers plain integers. Their count (spans in starts/ends), or -1 for any
   other text (or more than `max` numbers). */
static int plain_numbers(const unsigned char *s, size_t size, uint32_t *starts, uint32_t *ends, int max) {
    int count = 0, run = 0;
    size_t i = 0;
    while (i < size) {
        unsigned char c = s[i];
        if (is_letter(c)) {
            i++;
            while (i < size && (is_letter(s[i]) || is_digit(s[i]) || s[i] == '$'))
                i++;
            run = 0;
        } else if (is_digit(c)) {
            size_t start = i++;
            while (i < size && is_digit(s[i]))
                i++;
            if (i < size && (is_letter(s[i]) || s[i] == '$' || s[i] == '.'))
                return -1;  /* 1e5, 0x1F, 1_000, 1.5, 7$, junk */
            if (count == max)
                return -1;
            starts[count] = (uint32_t)start;
            ends[count] = (uint32_t)i;
            count++;
            run = 0;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' || c == ',' || c == ';' ||
                   c == ':' || c == '(' || c == ')' || c == '[' || c == ']') {
            i++;
            run = 0;
        } else if (c == '=' || c == '+' || c == '*' || c == '<' || c == '>' || c == '%' || c == '~' || c == '!' ||
                   c == '@' || c == '#' || c == '^' || c == '&' || c == '|' || c == '`' || c == '?') {
            i++;
            if (++run >= PLAIN_OPERATOR_RUN)
                return -1;
        } else if (c == '-' || c == '/') {
            if (i + 1 < size && s[i + 1] == (c == '-' ? '-' : '*'))
                return -1;  /* a comment */
            i++;
            if (++run >= PLAIN_OPERATOR_RUN)
                return -1;
        } else {
            return -1;  /* quotes, dots, $, backslashes, non-ASCII, control characters */
        }
    }
    return count;
}

static uint64_t fnv1a(const unsigned char *data, size_t len) {
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= data[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The literal shape of a plain text (`shape`, its length returned): numbers written 0. */
static size_t blank_numbers(const unsigned char *sql, size_t len, const uint32_t *starts, const uint32_t *ends,
                            int count, unsigned char *shape) {
    size_t out = 0, pos = 0;
    for (int i = 0; i < count; i++) {
        memcpy(shape + out, sql + pos, starts[i] - pos);
        out += starts[i] - pos;
        shape[out++] = '0';
        pos = ends[i];
    }
    memcpy(shape + out, sql + pos, len - pos);
    return out + len - pos;
}

static void put_be32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* The stand-in's messages for a client text whose numbers are at starts/ends, in p->out:
   their length; 0 if a number the statement keeps literal differs (another stand-in of
   the shape may fit), -1 if a parameter is not an int4 as written (numbers.literal_value's
   common case; the gate decides the rest). */
static long build_standin(Pump *p, const Standin *s, const unsigned char *sql, const uint32_t *starts,
                          const uint32_t *ends) {
    char *out = p->out;
    size_t pos = 5;
    memcpy(out + pos, s->head, s->head_len);
    pos += s->head_len;
    for (int j = 0; j < s->nsent; j++) {
        const SentNumber *number = &s->sent[j];
        const char *text;
        size_t len;
        if (number->source >= 0) {
            text = (const char *)sql + starts[number->source];
            len = ends[number->source] - starts[number->source];
        } else {
            text = number->text;
            len = number->text_len;
        }
        if (number->kind == KIND_KEEP) {
            if (len != number->text_len || memcmp(text, number->text, len) != 0)
                return 0;
            continue;
        }
        if (len == 0 || len > 9 || (text[0] == '0' && len > 1))
            return -1;
        for (size_t k = 0; k < len; k++)
            if (!is_digit((unsigned char)text[k]))
                return -1;
        int negative = number->kind == KIND_NEGATED && !(len == 1 && text[0] == '0');
        if (pos + 4 + 1 + len + s->tail_len > OUT_SIZE)
            return -1;
        put_be32(out + pos, (uint32_t)(len + (size_t)negative));
        pos += 4;
        if (negative)
            out[pos++] = '-';
        memcpy(out + pos, text, len);
        pos += len;
    }
    /* The Bind's length covers its body up to the result formats (the tail's first 2 bytes). */
    out[0] = 'B';
    put_be32(out + 1, (uint32_t)(pos - 1 + 2));
    memcpy(out + pos, s->tail, s->tail_len);
    return (long)(pos + s->tail_len);
}

/* What the gate does with a `Parse ""` body after its name (its statement, or as sent), or NULL. */
static const ParseAlias *parse_alias(const Standins *t, const unsigned char *body, size_t len) {
    uint64_t hash = fnv1a(body, len);
    for (int i = 0; i < t->nparses; i++) {
        const ParseAlias *a = &t->parses[i];
        if (a->hash == hash && a->len == len && memcmp(a->body, body, len) == 0)
            return a;
    }
    return NULL;
}

/* The verb of a prepared statement with a tag edit, or NULL. */
static const char *statement_edit(const Standins *t, const unsigned char *name, size_t len) {
    for (int i = 0; t != NULL && i < t->nedits; i++)
        if (t->edits[i].name_len == len && memcmp(t->edits[i].name, name, len) == 0)
            return t->edits[i].verb;
    return NULL;
}

/* A gated link's chunk of whole Parse/Bind/Describe/Execute/Sync/Close/Flush frames (its
   Parses the table's, `unnamed_chunk`), as tag edits see it (responses.py
   `_steady_cycle`): 1 if the thread may forward it, having noted the verb its answer's
   CommandComplete needs (`edit_owed`), what the unnamed portal is bound to
   (`portal_edit`) and the unnamed statement's edit (`unnamed_edit`); 0 if Python's
   response editor must see it: an execution of an edited statement other than the
   steady cycle (Bind and Execute of the unnamed portal, Sync, nothing else in flight; a
   `Parse ""` may open it), or a named portal of one. */
static int note_edits(Link *l, const unsigned char *buf, size_t n) {
    const Standins *t = l->standins;
    if ((t == NULL || (t->nedits == 0 && t->parse_edits == 0)) && !l->portal_edit[0] && !l->unnamed_edit[0])
        return 1;
    const char *bound = l->portal_edit[0] ? l->portal_edit : NULL;
    const char *unnamed = l->unnamed_edit[0] ? l->unnamed_edit : NULL;
    const char *owed = NULL;
    unsigned char types[5];
    int nframes = 0, unnamed_binds = 0;
    size_t pos = 0;
    while (pos < n) {
        unsigned char type = buf[pos];
        size_t len = (size_t)be32(buf + pos + 1) - 4;
        const unsigned char *body = buf + pos + 5, *end = body + len;
        if (nframes < 5)
            types[nframes] = type;
        nframes++;
        if (type == 'P') {
            /* (`unnamed_chunk` let only `Parse ""` of the table's texts through) */
            const ParseAlias *a = parse_alias(t, body + 1, len - 1);
            unnamed = a != NULL && a->verb[0] ? a->verb : NULL;
        } else if (type == 'B') {
            const unsigned char *portal_end = memchr(body, 0, len);
            const unsigned char *name_end = portal_end ? memchr(portal_end + 1, 0, (size_t)(end - portal_end - 1)) : NULL;
            if (name_end == NULL)
                return 0;
            const char *verb = name_end == portal_end + 1 ? unnamed
                               : statement_edit(t, portal_end + 1, (size_t)(name_end - portal_end - 1));
            if (portal_end != body) {
                if (verb != NULL)
                    return 0;
            } else {
                bound = verb;
                unnamed_binds++;
            }
        } else if (type == 'E') {
            if (len == 0)
                return 0;
            if (body[0] == 0 && bound != NULL) {
                if (owed != NULL)
                    return 0;
                owed = bound;
            }
        } else if (type == 'C' && len == 2 && body[1] == 0) {
            if (body[0] == 'P')
                bound = NULL;
            else if (body[0] == 'S')
                unnamed = NULL;
        }
        pos += len + 5;
    }
    if (owed != NULL) {
        int lead = types[0] == 'P', cycle = nframes - lead;  /* (a `Parse ""` may open the cycle) */
        int steady = (cycle == 3 || (cycle == 4 && types[lead + 1] == 'D')) && types[lead] == 'B' &&
                     types[nframes - 2] == 'E' && types[nframes - 1] == 'S' && unnamed_binds == 1 &&
                     l->pending_ready == 0;
        if (!steady)
            return 0;
        snprintf(l->edit_owed, VERB_SIZE, "%s", owed);
    }
    if (bound == NULL)
        l->portal_edit[0] = 0;
    else if (bound != l->portal_edit)
        snprintf(l->portal_edit, VERB_SIZE, "%s", bound);
    if (unnamed == NULL)
        l->unnamed_edit[0] = 0;
    else if (unnamed != l->unnamed_edit)
        snprintf(l->unnamed_edit, VERB_SIZE, "%s", unnamed);
    return 1;
}

/* autoprepare.py `_EMPTY_PARSE` and `_FAILING_PARSE`: `Parse "" ""`, which PostgreSQL
   answers with ParseComplete and never plans, and `Parse "" "SELECT"`, as cheap but
   refused in a failed transaction like the client's own Parse. */
static const char EMPTY_PARSE[] = {'P', 0, 0, 0, 8, 0, 0, 0, 0};
static const char FAILING_PARSE[] = {'P', 0, 0, 0, 14, 0, 'S', 'E', 'L', 'E', 'C', 'T', 0, 0, 0};

/* Auto-prepare's part of a gated link's chunk of whole frames, as the gate does it
   (autoprepare.py `parse` and `rename`): a `Parse ""` of a text the gate prepared goes as
   the empty statement (the failing one when the upstream may be in a failed transaction:
   something in flight, status E, or a Sync earlier in the chunk), and from then on the
   client's unnamed statement is that server statement: Binds of statement "" and
   Describes of it name it instead, until a Close of it (or a Query). A text the gate
   forwards as sent goes so, and ends the alias. The length of the chunk as sent, or -1
   if it goes back to Python: any other Parse. With
   `out` (room for that length), writes the chunk there and moves the link's alias and
   the statement counts; without, changes nothing. */
static long unnamed_chunk(Pump *p, Link *l, const unsigned char *buf, size_t n, char *out) {
    const Standins *t = l->standins;
    const char *alias = l->alias;
    size_t alias_len = l->alias_len, at = 0, pos = 0;
    int parsed = l->unnamed_parsed, may_fail = l->pending_ready || l->tx_status == 'E';
    while (pos < n) {
        unsigned char type = buf[pos];
        size_t size = (size_t)be32(buf + pos + 1) + 1, len = size - 5;
        const unsigned char *body = buf + pos + 5, *split = NULL;
        const char *piece = (const char *)buf + pos;
        size_t piece_len = size;
        if (type == 'P') {
            const ParseAlias *a;
            if (len < 1 || body[0] != 0 || t == NULL || (a = parse_alias(t, body + 1, len - 1)) == NULL)
                return -1;
            alias = a->alias;
            alias_len = a->alias_len;
            parsed = 1;
            if (alias_len) {
                piece = may_fail ? FAILING_PARSE : EMPTY_PARSE;
                piece_len = may_fail ? sizeof FAILING_PARSE : sizeof EMPTY_PARSE;
            }
            if (out != NULL && a->slot >= 0)
                p->statements[a->slot]++;
        } else if (type == 'B' && alias_len) {
            const unsigned char *portal_end = memchr(body, 0, len);
            if (portal_end != NULL && portal_end + 1 < body + len && portal_end[1] == 0)
                split = portal_end + 1;  /* statement "": its zero byte becomes the alias */
        } else if (type == 'D' && alias_len && len == 2 && body[0] == 'S' && body[1] == 0) {
            split = body + 1;
        } else if (type == 'C' && len == 2 && body[0] == 'S' && body[1] == 0) {
            alias_len = 0;
        } else if (type == 'S') {
            may_fail = 1;
        }
        if (split != NULL) {
            size_t head = (size_t)(split - (buf + pos)), rest = size - head - 1;
            if (out != NULL) {
                memcpy(out + at, buf + pos, head);
                put_be32(out + at + 1, (uint32_t)(size - 1 - 1 + alias_len));
                memcpy(out + at + head, alias, alias_len);
                memcpy(out + at + head + alias_len, split + 1, rest);
            }
            at += head + alias_len + rest;
        } else {
            if (out != NULL)
                memcpy(out + at, piece, piece_len);
            at += piece_len;
        }
        pos += size;
    }
    if (out != NULL) {
        if (alias != l->alias)
            memcpy(l->alias, alias, alias_len);
        l->alias_len = alias_len;
        l->unnamed_parsed = parsed;
    }
    return (long)at;
}

/* Relay.note of a client's Query the thread sends (as it is or as a stand-in), counted
   under `slot`; then the bytes `out` go upstream. 1 (sent, or the link went back). */
static int send_query(Pump *p, int index, Link *l, int slot, const char *out, size_t len, double t0) {
    l->mid_extended = 0;
    l->copy_syncs = 0;
    l->copy_end_sent = 0;
    if (slot >= 0)
        p->statements[slot]++;
    l->chunks++;
    l->cycle_start = t0;
    l->proxy_time = 0.0;
    l->pending_ready = 1;
    l->portal_edit[0] = 0;  /* a Query (or a stand-in's Bind) replaces the unnamed portal */
    l->alias_len = 0;       /* and a Query drops the unnamed statement (a stand-in is sent only when there is none) */
    l->unnamed_parsed = 0;
    l->unnamed_edit[0] = 0;
    if (send_or_keep(l->upstream_fd, &l->to_upstream, out, len) < 0) {
        hand_back(p, index, l, BACK_CLOSED);
        return 1;
    }
    l->proxy_time += now() - t0;
    return 1;
}

/* A lone Query (`buf`, `n` bytes) of a link with stand-ins, with nothing in flight: sent
   upstream as its stand-in if the link has one for its text. 1 if sent, 0 if the
   chunk goes on as any other (back to Python). */
static int serve_standin(Pump *p, int index, Link *l, const unsigned char *buf, size_t n, double t0) {
    const unsigned char *sql = buf + 5;
    size_t len = n - 6;
    if (buf[n - 1] != 0)
        return 0;
    const Standins *table = l->standins;
    if (table->nverbatim) {
        uint64_t hash = fnv1a(sql, len + 1);
        for (int i = 0; i < table->nverbatim; i++) {
            const Verbatim *v = &table->verbatim[i];
            if (v->hash == hash && v->len == len + 1 && memcmp(v->text, sql, len + 1) == 0)
                return send_query(p, index, l, v->slot, (const char *)buf, n, t0);
        }
    }
    if (len > MAX_SHAPE - 1 || table->count == 0 || l->unnamed_parsed)
        return 0;  /* (with an unnamed statement, the gate's stand-in closes it first, as a Query would) */
    uint32_t starts[MAX_NUMBERS], ends[MAX_NUMBERS];
    int count = plain_numbers(sql, len, starts, ends, MAX_NUMBERS);
    if (count <= 0)
        return 0;
    size_t shape_len = blank_numbers(sql, len, starts, ends, count, p->shape);
    uint64_t hash = fnv1a(p->shape, shape_len);
    long out_len = 0;
    const Standin *s = table->buckets[hash & (table->nbuckets - 1)];
    for (; s != NULL; s = s->next) {
        if (s->hash != hash || s->shape_len != shape_len || s->nclient != count ||
            memcmp(s->shape, p->shape, shape_len) != 0)
            continue;
        out_len = build_standin(p, s, sql, starts, ends);
        if (out_len != 0)
            break;
    }
    if (s == NULL || out_len <= 0)
        return 0;
    p->standins_served++;
    l->bind_owed = 1;
    memcpy(l->edit_owed, s->verb, VERB_SIZE);
    return send_query(p, index, l, s->slot, p->out, (size_t)out_len, t0);
}

/* Read a chunk from `fd` into the scratch buffer: its length, or 0 when there is nothing
   to act on (nothing to read yet, or end of stream / an error: the link went back). */
static ssize_t read_chunk(Pump *p, int index, Link *l, int fd) {
    ssize_t n;
    do {
        n = recv(fd, p->scratch, READ_SIZE, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (n <= 0) {
        hand_back(p, index, l, BACK_CLOSED);
        return 0;
    }
    return n;
}

static void from_client(Pump *p, int index, Link *l) {
    ssize_t n = read_chunk(p, index, l, l->client_fd);
    if (n == 0)
        return;
    double t0 = now();
    const unsigned char *buf = (const unsigned char *)p->scratch;
    if (l->standins != NULL && buf[0] == 'Q' && n >= 6 && (size_t)be32(buf + 1) + 1 == (size_t)n &&
        !l->pending_ready && !l->mid_extended && !l->bind_owed && !l->edit_owed[0] && !l->skip && !l->head_len &&
        (l->epoch < 0 || p->epochs[l->epoch] == l->epoch_value) &&
        serve_standin(p, index, l, buf, (size_t)n, t0))
        return;
    int plain = plain_client_chunk(p, l, buf, (size_t)n);
    long sent_len = n;
    if (plain && l->gated && (plain == 2 || l->alias_len))
        sent_len = unnamed_chunk(p, l, buf, (size_t)n, NULL);
    if (!plain || sent_len < 0 || (l->gated && !note_edits(l, buf, (size_t)n))) {
        if (keep_tail(l, p->scratch, (size_t)n) < 0)
            abort();
        hand_back(p, index, l, BACK_CLIENT_DATA);
        return;
    }
    const char *sent = p->scratch;
    if (plain == 2 || l->alias_len) {
        if ((size_t)sent_len > p->renamed_cap) {
            char *grown = realloc(p->renamed, (size_t)sent_len);
            if (grown == NULL)
                abort();
            p->renamed = grown;
            p->renamed_cap = (size_t)sent_len;
        }
        unnamed_chunk(p, l, buf, (size_t)n, p->renamed);
        sent = p->renamed;
    }
    long long owed = 0, statements = 0;
    size_t pos = 0;
    while (pos < (size_t)n) {
        int noted = note(l, buf[pos]);
        owed += noted & OWES_READY;
        statements += noted >> 1;
        pos += (size_t)be32(buf + pos + 1) + 1;
    }
    if (l->slot >= 0)
        p->statements[l->slot] += (unsigned long long)statements;
    l->chunks++;
    if (owed) {
        if (!l->pending_ready) {
            l->cycle_start = t0;
            l->proxy_time = 0.0;
        }
        l->pending_ready += owed;
    }
    if (send_or_keep(l->upstream_fd, &l->to_upstream, sent, (size_t)sent_len) < 0) {
        hand_back(p, index, l, BACK_CLOSED);
        return;
    }
    l->proxy_time += now() - t0;
}

/* ------------------------------------------------------------------ upstream → client */

static void request_done(Pump *p, Link *l, double t0) {
    l->failed_since_idle = 0;
    l->statement_gone = 0;
    double t = now();
    double proxy = l->proxy_time + (t - t0);
    double upstream = t - l->cycle_start - proxy;
    observe(&p->latency[0], p->bounds, p->nbounds, proxy);
    observe(&p->latency[1], p->bounds, p->nbounds, upstream > 0.0 ? upstream : 0.0);
}

/* Walk a server chunk. Returns where the part to forward ends: the chunk's length, or
   the offset of the first message Python must see. Counts ReadyForQuery messages in
   *ready and their last status in *status; -1 for an impossible length. A stand-in's
   BindComplete is cut out of the chunk (*np shrinks); any other message while it is
   owed goes to Python, whose response editor then removes it. */
static long scan_upstream(Pump *p, Link *l, unsigned char *buf, size_t *np, long long *ready, int *status) {
    size_t pos = 0, n = *np;
    while (pos < n) {
        if (l->skip) {
            size_t take = l->skip < n - pos ? l->skip : n - pos;
            pos += take;
            l->skip -= (uint32_t)take;
            continue;
        }
        unsigned char type;
        uint32_t length;
        if (l->head_len == 0) {
            type = buf[pos];
            if (l->bind_owed) {
                if (type != '2' || n - pos < 5)
                    return (long)pos;
                if (be32(buf + pos + 1) != 4) {
                    snprintf(l->invalid, sizeof l->invalid, "invalid message length %u from server", be32(buf + pos + 1));
                    return -1;
                }
                memmove(buf + pos, buf + pos + 5, n - pos - 5);
                n -= 5;
                *np = n;
                l->bind_owed = 0;
                continue;
            }
            if (l->edit_owed[0] && type == 'C') {
                /* the edited statement's CommandComplete: rewritten here when whole in
                   the chunk, else Python's editor takes it (with the edit owed) */
                if (n - pos < 5)
                    return (long)pos;
                length = be32(buf + pos + 1);
                if (length < 5) {
                    snprintf(l->invalid, sizeof l->invalid, "invalid CommandComplete message from server");
                    return -1;
                }
                if ((size_t)length + 1 > n - pos || length - 5 > MAX_EDITED_TAG)
                    return (long)pos;
                const char *tag = (const char *)buf + pos + 5;
                size_t tag_len = length - 5;
                if (tag[tag_len] != 0 || memchr(tag, 0, tag_len) != NULL) {
                    snprintf(l->invalid, sizeof l->invalid, "invalid CommandComplete message from server");
                    return -1;
                }
                char edited[VERB_SIZE + 3 + MAX_EDITED_TAG];
                size_t edited_len = edited_tag(tag, tag_len, l->edit_owed, edited);
                size_t old_end = pos + 1 + length, new_end = pos + 5 + edited_len + 1;
                memmove(buf + new_end, buf + old_end, n - old_end);
                memcpy(buf + pos + 5, edited, edited_len);
                buf[pos + 5 + edited_len] = 0;
                put_be32((char *)buf + pos + 1, (uint32_t)(4 + edited_len + 1));
                n = n - old_end + new_end;
                *np = n;
                l->edit_owed[0] = 0;
                pos = new_end;
                continue;
            }
            if (p->upstream_special[type])
                return (long)pos;
            if (n - pos >= 6 || (n - pos >= 5 && type != 'Z')) {
                length = be32(buf + pos + 1);
                if (length < 4 || (type == 'Z' && length != 5)) {
                    snprintf(l->invalid, sizeof l->invalid, "invalid message length %u from server", length);
                    return -1;
                }
                if (type == 'Z') {
                    (*ready)++;
                    *status = buf[pos + 5];
                    l->edit_owed[0] = 0;  /* its cycle is over (a PortalSuspended or empty query ended it) */
                    if (*status == 'I')
                        l->portal_edit[0] = 0;  /* the transaction ended, and every portal with it */
                    pos += 6;
                } else {
                    pos += 5;
                    l->skip = length - 4;
                }
                continue;
            }
        }
        /* a header cut by a chunk's end: gather it */
        while (pos < n && l->head_len < 6) {
            if (l->head_len == 5 && l->head[0] != 'Z')
                break;
            l->head[l->head_len++] = buf[pos++];
        }
        int need = l->head[0] == 'Z' ? 6 : 5;
        if (l->head_len < need)
            continue;  /* pos == n: the rest comes with the next chunk */
        type = l->head[0];
        length = be32(l->head + 1);
        l->head_len = 0;
        if (length < 4 || (type == 'Z' && length != 5)) {
            snprintf(l->invalid, sizeof l->invalid, "invalid message length %u from server", length);
            return -1;
        }
        if (type == 'Z') {
            (*ready)++;
            *status = l->head[5];
            l->edit_owed[0] = 0;
            if (*status == 'I')
                l->portal_edit[0] = 0;
        } else {
            l->skip = length - 4;
        }
    }
    return (long)n;
}

static void from_upstream(Pump *p, int index, Link *l) {
    ssize_t n = read_chunk(p, index, l, l->upstream_fd);
    if (n == 0)
        return;
    double t0 = now();
    long long ready = 0;
    int status = l->tx_status;
    size_t len = (size_t)n;
    long end = scan_upstream(p, l, (unsigned char *)p->scratch, &len, &ready, &status);
    n = (ssize_t)len;
    if (end < 0) {
        hand_back(p, index, l, BACK_UPSTREAM_INVALID);
        return;
    }
    if (end > 0 && send_or_keep(l->client_fd, &l->to_client, p->scratch, (size_t)end) < 0) {
        hand_back(p, index, l, BACK_CLOSED);
        return;
    }
    int done = 0;
    if (ready) {
        l->tx_status = status;
        l->cycle_failed = 0;
        while (ready && l->pending_ready) {
            ready--;
            l->pending_ready--;
            if (!l->pending_ready) {
                request_done(p, l, t0);
                done = 1;
            }
        }
    }
    if (end < n) {
        if (keep_tail(l, p->scratch + end, (size_t)(n - end)) < 0)
            abort();
        hand_back(p, index, l, BACK_UPSTREAM_DATA);
    }
    if (!done)
        l->proxy_time += now() - t0;
}

/* ------------------------------------------------------------------ the thread */

static void act(Pump *p, uint64_t tok, uint32_t events) {
    int index = (int)((tok & 0xffffffffu) >> 1);
    int upstream = (int)(tok & 1);
    uint32_t gen = (uint32_t)(tok >> 32);
    if (index >= p->nlinks)
        return;
    Link *l = p->links[index];
    if (l == NULL || !l->in_use || l->gen != gen || l->state != ATTACHED)
        return;
    int fd = upstream ? l->upstream_fd : l->client_fd;
    Pending *out = upstream ? &l->to_upstream : &l->to_client;
    int acted = 0;
    if (out->data && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        acted = 1;
        if (flush(fd, out) < 0) {
            hand_back(p, index, l, BACK_CLOSED);
            return;
        }
    }
    /* reading this side is allowed while the other side's writes are not held up */
    int may_read = upstream ? l->to_client.data == NULL : l->to_upstream.data == NULL;
    if (may_read && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        acted = 1;
        if (upstream)
            from_upstream(p, index, l);
        else
            from_client(p, index, l);
    }
    if (l->state != ATTACHED)
        return;
    if (!acted && (events & (EPOLLERR | EPOLLHUP))) {
        hand_back(p, index, l, BACK_CLOSED);  /* a hang-up on a side held up: Python ends it */
        return;
    }
    set_masks(p, index, l);
}

static void *run(void *arg) {
    Pump *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);  /* signals are the main thread's */
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(p->epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        pthread_mutex_lock(&p->mu);
        if (p->stopping) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == WAKE_TOKEN) {
                uint64_t v;
                ssize_t r = read(p->wakefd, &v, sizeof v);
                (void)r;
                continue;
            }
            act(p, events[i].data.u64, events[i].events);
        }
        int notify = p->notify_due;
        p->notify_due = 0;
        pthread_mutex_unlock(&p->mu);
        if (notify) {
            uint64_t one = 1;
            ssize_t r = write(p->notifyfd, &one, sizeof one);
            (void)r;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ Standins (Python API) */

static PyTypeObject StandinsType;

static char *copy_bytes(PyObject *obj, size_t *len, const char *what) {
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(obj, &data, &size) < 0) {
        PyErr_Format(PyExc_TypeError, "Standins: %s must be bytes", what);
        return NULL;
    }
    char *copy = malloc(size ? (size_t)size : 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, data, (size_t)size);
    *len = (size_t)size;
    return copy;
}

static void free_standin(Standin *s) {
    if (s == NULL)
        return;
    for (int j = 0; s->sent != NULL && j < s->nsent; j++)
        free(s->sent[j].text);
    free(s->sent);
    free(s->shape);
    free(s->head);
    free(s->tail);
    free(s);
}

static void Standins_dealloc(Standins *t) {
    for (size_t b = 0; t->buckets != NULL && b < t->nbuckets; b++) {
        Standin *s = t->buckets[b];
        while (s != NULL) {
            Standin *next = s->next;
            free_standin(s);
            s = next;
        }
    }
    free(t->buckets);
    for (int i = 0; t->edits != NULL && i < t->nedits; i++)
        free(t->edits[i].name);
    free(t->edits);
    for (int i = 0; t->verbatim != NULL && i < t->nverbatim; i++)
        free(t->verbatim[i].text);
    free(t->verbatim);
    for (int i = 0; t->parses != NULL && i < t->nparses; i++)
        free(t->parses[i].body);
    free(t->parses);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* A verb (bytes) into `out`: -1 (an exception set) if it is empty, too long or holds a zero byte. */
static int verb_from(PyObject *verb, char *out) {
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(verb, &data, &len) < 0)
        return -1;
    if (len < 1 || len >= VERB_SIZE || memchr(data, 0, (size_t)len) != NULL) {
        PyErr_SetString(PyExc_ValueError, "Standins: a verb of 1 to 31 bytes");
        return -1;
    }
    memcpy(out, data, (size_t)len);
    out[len] = 0;
    return 0;
}

/* One entry: (shape, nclient, [(source, kind, text), ...], head, tail, slot[, verb]). */
static Standin *standin_from(PyObject *entry) {
    PyObject *shape, *sent, *head, *tail, *verb = NULL;
    int nclient, slot;
    if (!PyArg_ParseTuple(entry, "SiOSSi|S", &shape, &nclient, &sent, &head, &tail, &slot, &verb))
        return NULL;
    Standin *s = calloc(1, sizeof(Standin));
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *seq = PySequence_Fast(sent, "Standins: the sent numbers must be a sequence");
    if (seq == NULL)
        goto fail;
    Py_ssize_t nsent = PySequence_Fast_GET_SIZE(seq);
    if (nclient < 1 || nclient > MAX_NUMBERS || nsent < 1 || nsent > MAX_NUMBERS) {
        PyErr_SetString(PyExc_ValueError, "Standins: 1 to 64 numbers");
        Py_DECREF(seq);
        goto fail;
    }
    s->nclient = nclient;
    s->slot = slot;
    s->sent = calloc((size_t)nsent, sizeof(SentNumber));
    if (s->sent == NULL) {
        PyErr_NoMemory();
        Py_DECREF(seq);
        goto fail;
    }
    s->nsent = (int)nsent;
    for (Py_ssize_t j = 0; j < nsent; j++) {
        SentNumber *number = &s->sent[j];
        PyObject *text;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, j), "iiS", &number->source, &number->kind, &text) ||
            (number->text = copy_bytes(text, &number->text_len, "a number")) == NULL) {
            Py_DECREF(seq);
            goto fail;
        }
        if (number->source >= nclient || number->source < -1 || number->kind < KIND_KEEP ||
            number->kind > KIND_NEGATED || (number->source < 0 && number->kind != KIND_KEEP && number->text_len == 0)) {
            PyErr_SetString(PyExc_ValueError, "Standins: a sent number's source or kind is out of range");
            Py_DECREF(seq);
            goto fail;
        }
    }
    Py_DECREF(seq);
    if ((s->shape = copy_bytes(shape, &s->shape_len, "shape")) == NULL ||
        (s->head = copy_bytes(head, &s->head_len, "head")) == NULL ||
        (s->tail = copy_bytes(tail, &s->tail_len, "tail")) == NULL)
        goto fail;
    if (s->shape_len >= MAX_SHAPE || s->head_len + s->tail_len > 4096) {
        PyErr_SetString(PyExc_ValueError, "Standins: shape, head or tail too long");
        goto fail;
    }
    if (verb != NULL && verb_from(verb, s->verb) < 0)
        goto fail;
    s->hash = fnv1a((const unsigned char *)s->shape, s->shape_len);
    return s;
fail:
    free_standin(s);
    return NULL;
}

/* One item of a Standins array from its Python tuple: 0, or -1 with an exception set. */
typedef int (*ItemFrom)(PyObject *item, void *out);

/* A Standins array from a sequence of tuples (`what`: the error for anything else): its
   items of `size` bytes in `*array`, counted in `*count` before each is made, so that
   dealloc frees what a failed one left. 0, or -1 with an exception set. */
static int items_from(PyObject *items, const char *what, size_t size, void **array, int *count, ItemFrom one) {
    PyObject *seq = PySequence_Fast(items, what);
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 4096) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "Standins: at most 4096 of each");
        return -1;
    }
    *array = calloc(n ? (size_t)n : 1, size);
    if (*array == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        (*count)++;
        if (one(PySequence_Fast_GET_ITEM(seq, i), (char *)*array + (size_t)i * size) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* A StatementEdit from (statement name, verb). */
static int edit_from(PyObject *item, void *out) {
    StatementEdit *e = out;
    PyObject *name, *verb;
    if (!PyArg_ParseTuple(item, "SS", &name, &verb) ||
        (e->name = copy_bytes(name, &e->name_len, "a statement name")) == NULL)
        return -1;
    return verb_from(verb, e->verb);
}

/* A Verbatim from (Query body, slot). */
static int verbatim_from(PyObject *item, void *out) {
    Verbatim *v = out;
    PyObject *text;
    if (!PyArg_ParseTuple(item, "Si", &text, &v->slot) || (v->text = copy_bytes(text, &v->len, "a text")) == NULL)
        return -1;
    if (v->len == 0 || v->text[v->len - 1] != 0) {
        PyErr_SetString(PyExc_ValueError, "Standins: a Query body ends with its zero byte");
        return -1;
    }
    v->hash = fnv1a((const unsigned char *)v->text, v->len);
    return 0;
}

/* A ParseAlias from (Parse body after the name, server statement name and its zero byte or b"" (as sent),
   slot[, verb]). */
static int parse_from(PyObject *item, void *out) {
    ParseAlias *a = out;
    PyObject *body, *alias, *verb = NULL;
    char *name;
    Py_ssize_t name_len;
    if (!PyArg_ParseTuple(item, "SSi|S", &body, &alias, &a->slot, &verb) ||
        (a->body = copy_bytes(body, &a->len, "a Parse body")) == NULL ||
        PyBytes_AsStringAndSize(alias, &name, &name_len) < 0 || (verb != NULL && verb_from(verb, a->verb) < 0))
        return -1;
    if (name_len != 0 && (name_len < 2 || name_len > ALIAS_SIZE || name[name_len - 1] != 0 ||
                          memchr(name, 0, (size_t)name_len - 1))) {
        PyErr_SetString(PyExc_ValueError, "Standins: an alias is a statement name of 1 to 63 bytes and its zero byte");
        return -1;
    }
    memcpy(a->alias, name, (size_t)name_len);
    a->alias_len = (size_t)name_len;
    a->hash = fnv1a((const unsigned char *)a->body, a->len);
    return 0;
}

static PyObject *Standins_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *entries, *edits = NULL, *verbatim = NULL, *parses = NULL;
    if (!PyArg_ParseTuple(args, "O|OOO", &entries, &edits, &verbatim, &parses))
        return NULL;
    PyObject *seq = PySequence_Fast(entries, "Standins: expected a sequence of entries");
    if (seq == NULL)
        return NULL;
    Standins *t = (Standins *)type->tp_alloc(type, 0);
    if (t == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t nbuckets = 8;
    while (nbuckets < (size_t)n * 2)
        nbuckets *= 2;
    t->buckets = calloc(nbuckets, sizeof(Standin *));
    if (t->buckets == NULL) {
        Py_DECREF(seq);
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
    t->nbuckets = nbuckets;
    for (Py_ssize_t i = 0; i < n; i++) {
        Standin *s = standin_from(PySequence_Fast_GET_ITEM(seq, i));
        if (s == NULL) {
            Py_DECREF(seq);
            Py_DECREF(t);
            return NULL;
        }
        Standin **bucket = &t->buckets[s->hash & (nbuckets - 1)];
        s->next = *bucket;
        *bucket = s;
        t->count++;
    }
    Py_DECREF(seq);
    if ((edits != NULL && items_from(edits, "Standins: expected a sequence of (name, verb)", sizeof(StatementEdit),
                                     (void **)&t->edits, &t->nedits, edit_from) < 0) ||
        (verbatim != NULL && items_from(verbatim, "Standins: expected a sequence of (text, slot)", sizeof(Verbatim),
                                        (void **)&t->verbatim, &t->nverbatim, verbatim_from) < 0) ||
        (parses != NULL && items_from(parses, "Standins: expected a sequence of (body, alias, slot)",
                                      sizeof(ParseAlias), (void **)&t->parses, &t->nparses, parse_from) < 0)) {
        Py_DECREF(t);
        return NULL;
    }
    for (int i = 0; i < t->nparses; i++)
        t->parse_edits += t->parses[i].verb[0] != 0;
    return (PyObject *)t;
}

static Py_ssize_t Standins_len(Standins *t) {
    return t->count;
}

static PySequenceMethods Standins_as_sequence = {
    .sq_length = (lenfunc)Standins_len,
};

static PyTypeObject StandinsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cowproxy.proxy._pump.Standins",
    .tp_basicsize = sizeof(Standins),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Standins(entries[, edits[, verbatim[, parses]]]): what the relay thread does for a gated session's "
              "gate: its stand-ins, each (shape, nclient, [(source, kind, text), ...], head, tail, slot[, verb]), "
              "its prepared statements whose answers get another tag, each (name, verb), the Query "
              "texts it forwards as sent, each (body, slot), and the `Parse \"\"` texts it prepared or forwards "
              "as sent, each (body after the name, server statement name and zero byte or b\"\", slot[, verb]) "
              "(see proxy/pump.py).",
    .tp_new = Standins_new,
    .tp_dealloc = (destructor)Standins_dealloc,
    .tp_as_sequence = &Standins_as_sequence,
};

/* literal_shape(sql) -> (shape, [number, ...]) or None: what the thread keys a text by. */
static PyObject *literal_shape(PyObject *module, PyObject *arg) {
    char *sql;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &sql, &len) < 0)
        return NULL;
    if (len >= MAX_SHAPE)
        Py_RETURN_NONE;
    uint32_t starts[MAX_NUMBERS], ends[MAX_NUMBERS];
    int count = plain_numbers((const unsigned char *)sql, (size_t)len, starts, ends, MAX_NUMBERS);
    if (count <= 0)
        Py_RETURN_NONE;
    unsigned char shape[MAX_SHAPE];
    size_t shape_len = blank_numbers((const unsigned char *)sql, (size_t)len, starts, ends, count, shape);
    PyObject *numbers = PyList_New(count);
    if (numbers == NULL)
        return NULL;
    for (int i = 0; i < count; i++)
        PyList_SET_ITEM(numbers, i, PyBytes_FromStringAndSize(sql + starts[i], (Py_ssize_t)(ends[i] - starts[i])));
    return Py_BuildValue("(y#N)", shape, (Py_ssize_t)shape_len, numbers);
}

/* edited_tag(tag, verb) -> bytes: the thread's edit of a CommandComplete tag (responses.py `edited_tag`). */
static PyObject *edited_tag_py(PyObject *module, PyObject *args) {
    const char *tag, *verb;
    Py_ssize_t tag_len, verb_len;
    if (!PyArg_ParseTuple(args, "y#y#", &tag, &tag_len, &verb, &verb_len))
        return NULL;
    if (tag_len > MAX_EDITED_TAG || verb_len < 1 || verb_len >= VERB_SIZE) {
        PyErr_SetString(PyExc_ValueError, "edited_tag: tag or verb too long");
        return NULL;
    }
    char verb_z[VERB_SIZE], out[VERB_SIZE + 3 + MAX_EDITED_TAG];
    memcpy(verb_z, verb, (size_t)verb_len);
    verb_z[verb_len] = 0;
    size_t len = edited_tag(tag, (size_t)tag_len, verb_z, out);
    return PyBytes_FromStringAndSize(out, (Py_ssize_t)len);
}

static PyMethodDef module_methods[] = {
    {"edited_tag", (PyCFunction)edited_tag_py, METH_VARARGS,
     "edited_tag(tag: bytes, verb: bytes) -> bytes: a CommandComplete tag as the thread edits it."},
    {"literal_shape", (PyCFunction)literal_shape, METH_O,
     "literal_shape(sql: bytes) -> (shape, numbers) or None: a plain text's shape as the thread keys stand-ins."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ Python API */

static void lock(Pump *p) {
    if (pthread_mutex_trylock(&p->mu) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->mu);
    Py_END_ALLOW_THREADS
}

static void unlock(Pump *p) {
    pthread_mutex_unlock(&p->mu);
}

static int table_from(PyObject *obj, unsigned char out[256], const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view.len != 256) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s: expected a 256-byte table", what);
        return -1;
    }
    memcpy(out, view.buf, 256);
    PyBuffer_Release(&view);
    return 0;
}

static int Pump_init(Pump *p, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"client_native", "client_gated", "upstream_special", "max_message_size", "bounds",
                             NULL};
    PyObject *client_native, *client_gated, *upstream_special, *bounds;
    unsigned long long max_message_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOKO", kwlist, &client_native, &client_gated, &upstream_special,
                                     &max_message_size, &bounds))
        return -1;
    if (p->epfd > 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is already initialised");
        return -1;
    }
    if (table_from(client_native, p->client_native, "client_native") < 0 ||
        table_from(client_gated, p->client_gated, "client_gated") < 0 ||
        table_from(upstream_special, p->upstream_special, "upstream_special") < 0)
        return -1;
    PyObject *seq = PySequence_Fast(bounds, "bounds: expected a sequence of floats");
    if (seq == NULL)
        return -1;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    if (nb > MAX_BUCKETS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "bounds: too many buckets");
        return -1;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        p->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    p->nbounds = (int)nb;
    p->max_message_size = max_message_size;
    p->scratch = malloc(READ_SIZE + TAG_GROWTH);
    p->out = malloc(OUT_SIZE);
    if (p->scratch == NULL || p->out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->notifyfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->epfd < 0 || p->wakefd < 0 || p->notifyfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TOKEN};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wakefd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        PyErr_SetString(PyExc_OSError, "could not start the relay thread");
        return -1;
    }
    p->thread_started = 1;
    return 0;
}

static void stop(Pump *p) {
    if (!p->thread_started)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_mutex_unlock(&p->mu);
    uint64_t one = 1;
    ssize_t r = write(p->wakefd, &one, sizeof one);
    (void)r;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(p->thread, NULL);
    Py_END_ALLOW_THREADS
    p->thread_started = 0;
}

static void free_link(Link *l) {
    Py_CLEAR(l->standins);  /* (the GIL is held: only Python calls this) */
    free(l->to_client.data);
    free(l->to_upstream.data);
    free(l->tail);
    l->to_client.data = l->to_upstream.data = NULL;
    l->tail = NULL;
    l->in_use = 0;
}

static void Pump_dealloc(Pump *p) {
    stop(p);
    for (int i = 0; i < p->nlinks; i++) {
        if (p->links[i]) {
            free_link(p->links[i]);
            free(p->links[i]);
        }
    }
    free(p->links);
    free(p->back);
    free(p->scratch);
    free(p->out);
    free(p->renamed);
    if (p->epfd > 0)
        close(p->epfd);
    if (p->wakefd > 0)
        close(p->wakefd);
    if (p->notifyfd > 0)
        close(p->notifyfd);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *Pump_close(Pump *p, PyObject *unused) {
    stop(p);
    Py_RETURN_NONE;
}

static PyObject *Pump_fileno(Pump *p, PyObject *unused) {
    return PyLong_FromLong(p->notifyfd);
}

static PyObject *Pump_slot(Pump *p, PyObject *unused) {
    if (p->nslots >= MAX_SLOTS)
        Py_RETURN_NONE;
    return PyLong_FromLong(p->nslots++);
}

/* attach(client_fd, upstream_fd, slot, gated, epoch, epoch_value, state[, standins[, portal_edit[, alias[,
   unnamed_parsed[, unnamed_edit]]]]]) -> link id; state as `detach` returns it; slot -1: count no statements;
   epoch -1: depend on none; standins: a Standins or None; alias: the server statement the client's unnamed
   statement is (its name and zero byte, or empty); unnamed_parsed: the client may have an unnamed statement;
   unnamed_edit: the verb its executions' answers need. */
static PyObject *Pump_attach(Pump *p, PyObject *args) {
    int client_fd, upstream_fd, slot, gated, epoch;
    unsigned long long epoch_value;
    long long pending_ready, copy_syncs;
    int mid_extended, copy_end_sent, tx_status, cycle_failed, failed_since_idle, statement_gone;
    double cycle_start, proxy_time;
    PyObject *standins = Py_None;
    const char *portal_edit = "", *alias = "", *unnamed_edit = "";
    Py_ssize_t portal_edit_len = 0, alias_len = 0, unnamed_edit_len = 0;
    int unnamed_parsed = 0;
    if (!PyArg_ParseTuple(args, "iiipiK(LpLpipppdd)|Oy#y#py#", &client_fd, &upstream_fd, &slot, &gated, &epoch,
                          &epoch_value, &pending_ready, &mid_extended, &copy_syncs, &copy_end_sent, &tx_status,
                          &cycle_failed, &failed_since_idle, &statement_gone, &cycle_start, &proxy_time, &standins,
                          &portal_edit, &portal_edit_len, &alias, &alias_len, &unnamed_parsed, &unnamed_edit,
                          &unnamed_edit_len))
        return NULL;
    if (portal_edit_len >= VERB_SIZE || memchr(portal_edit, 0, (size_t)portal_edit_len) != NULL ||
        unnamed_edit_len >= VERB_SIZE || memchr(unnamed_edit, 0, (size_t)unnamed_edit_len) != NULL) {
        PyErr_SetString(PyExc_ValueError, "attach: the unnamed portal's or statement's verb is too long");
        return NULL;
    }
    if (alias_len != 0 && (alias_len < 2 || alias_len > ALIAS_SIZE || alias[alias_len - 1] != 0 ||
                           memchr(alias, 0, (size_t)alias_len - 1) != NULL || !gated)) {
        PyErr_SetString(PyExc_ValueError, "attach: an alias is a gated link's statement name and its zero byte");
        return NULL;
    }
    if (standins != Py_None && !PyObject_TypeCheck(standins, &StandinsType)) {
        PyErr_SetString(PyExc_TypeError, "attach: standins must be a Standins or None");
        return NULL;
    }
    if (standins != Py_None && !gated) {
        PyErr_SetString(PyExc_ValueError, "attach: stand-ins are for gated links");
        return NULL;
    }
    if (slot < -1 || slot >= p->nslots) {
        PyErr_SetString(PyExc_ValueError, "attach: unknown slot");
        return NULL;
    }
    if (epoch < -1 || epoch >= p->nepochs) {
        PyErr_SetString(PyExc_ValueError, "attach: unknown epoch");
        return NULL;
    }
    if (!p->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "attach: the relay thread is stopped");
        return NULL;
    }
    lock(p);
    int index = -1;
    for (int i = 0; i < p->nlinks; i++) {
        if (p->links[i] && !p->links[i]->in_use) {
            index = i;
            break;
        }
    }
    if (index < 0) {
        if (p->nlinks == p->cap) {
            int cap = p->cap ? p->cap * 2 : 64;
            Link **grown = realloc(p->links, sizeof(Link *) * (size_t)cap);
            if (grown == NULL) {
                unlock(p);
                return PyErr_NoMemory();
            }
            p->links = grown;
            p->cap = cap;
        }
        Link *fresh = calloc(1, sizeof(Link));
        if (fresh == NULL) {
            unlock(p);
            return PyErr_NoMemory();
        }
        index = p->nlinks++;
        p->links[index] = fresh;
    }
    Link *l = p->links[index];
    uint32_t gen = l->gen + 1;
    memset(l, 0, sizeof *l);
    l->gen = gen;
    l->in_use = 1;
    l->state = ATTACHED;
    l->client_fd = client_fd;
    l->upstream_fd = upstream_fd;
    l->slot = slot;
    l->gated = gated;
    l->epoch = epoch;
    l->epoch_value = epoch_value;
    l->pending_ready = pending_ready;
    l->mid_extended = mid_extended;
    l->copy_syncs = copy_syncs;
    l->copy_end_sent = copy_end_sent;
    l->tx_status = tx_status;
    l->cycle_failed = cycle_failed;
    l->failed_since_idle = failed_since_idle;
    l->statement_gone = statement_gone;
    l->cycle_start = cycle_start;
    l->proxy_time = proxy_time;
    memcpy(l->portal_edit, portal_edit, (size_t)portal_edit_len);
    l->portal_edit[portal_edit_len] = 0;
    memcpy(l->alias, alias, (size_t)alias_len);
    l->alias_len = (size_t)alias_len;
    l->unnamed_parsed = unnamed_parsed;
    memcpy(l->unnamed_edit, unnamed_edit, (size_t)unnamed_edit_len);
    l->unnamed_edit[unnamed_edit_len] = 0;
    if (standins != Py_None) {
        Py_INCREF(standins);
        l->standins = (Standins *)standins;
    }
    l->client_mask = l->upstream_mask = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = token(index, gen, 0)};
    int failed = epoll_ctl(p->epfd, EPOLL_CTL_ADD, client_fd, &ev) < 0;
    if (!failed) {
        ev.data.u64 = token(index, gen, 1);
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, upstream_fd, &ev) < 0) {
            int saved = errno;
            epoll_ctl(p->epfd, EPOLL_CTL_DEL, client_fd, NULL);
            errno = saved;
            failed = 1;
        }
    }
    if (failed) {
        int saved = errno;
        Py_CLEAR(l->standins);
        l->in_use = 0;
        unlock(p);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    unlock(p);
    return PyLong_FromUnsignedLongLong(((unsigned long long)gen << 32) | (unsigned long long)index);
}

static PyObject *bytes_of(const char *data, size_t len) {
    if (data == NULL)
        return PyBytes_FromStringAndSize("", 0);
    return PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
}

/* detach(link) -> (reason, state, to_client, to_upstream, tail, invalid, chunks, bind_owed, skip, head,
   edit_owed, portal_edit, alias, unnamed_parsed, unnamed_edit) or None if unknown. Takes the link out of the thread's hands (if it still had it) and
   frees it. `skip` and `head` say where the server stream stands: a hand-back for the
   client's chunk (or a close, or Python's own detach) may come while the thread is
   inside a server message, and Python's scanner must carry on inside it. */
static PyObject *Pump_detach(Pump *p, PyObject *arg) {
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    int index = (int)(id & 0xffffffffu);
    uint32_t gen = (uint32_t)(id >> 32);
    lock(p);
    Link *l = index < p->nlinks ? p->links[index] : NULL;
    if (l == NULL || !l->in_use || l->gen != gen) {
        unlock(p);
        Py_RETURN_NONE;
    }
    if (l->state == ATTACHED) {
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, l->client_fd, NULL);
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, l->upstream_fd, NULL);
    }
    PyObject *result = Py_BuildValue(
        "(i(LiLiiiiidd)NNNsKiky#yyy#iy)", l->state, l->pending_ready, l->mid_extended, l->copy_syncs, l->copy_end_sent,
        l->tx_status, l->cycle_failed, l->failed_since_idle, l->statement_gone, l->cycle_start, l->proxy_time,
        bytes_of(l->to_client.data ? l->to_client.data + l->to_client.off : NULL, l->to_client.len - l->to_client.off),
        bytes_of(l->to_upstream.data ? l->to_upstream.data + l->to_upstream.off : NULL,
                 l->to_upstream.len - l->to_upstream.off),
        bytes_of(l->tail, l->tail_len), l->invalid, l->chunks, l->bind_owed, (unsigned long)l->skip,
        (const char *)l->head, (Py_ssize_t)l->head_len, l->edit_owed, l->portal_edit, l->alias,
        (Py_ssize_t)l->alias_len, l->unnamed_parsed, l->unnamed_edit);
    free_link(l);
    unlock(p);
    return result;
}

/* returned() -> [link id, ...] handed back since the last call. */
static PyObject *Pump_returned(Pump *p, PyObject *unused) {
    uint64_t v;
    ssize_t r = read(p->notifyfd, &v, sizeof v);
    (void)r;
    lock(p);
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < p->nback; i++) {
        Link *l = p->links[p->back[i]];
        if (!l->in_use || l->state == ATTACHED)
            continue;
        PyObject *id = PyLong_FromUnsignedLongLong(((unsigned long long)l->gen << 32) | (unsigned long long)p->back[i]);
        if (id == NULL || PyList_Append(out, id) < 0)
            Py_CLEAR(out);
        Py_XDECREF(id);
    }
    p->nback = 0;
    unlock(p);
    return out;
}

static PyObject *Pump_epoch(Pump *p, PyObject *unused) {
    if (p->nepochs >= MAX_SLOTS)
        Py_RETURN_NONE;
    return PyLong_FromLong(p->nepochs++);
}

/* set_epoch(epoch, value): links attached under another value hand back their next client chunk. */
static PyObject *Pump_set_epoch(Pump *p, PyObject *args) {
    int epoch;
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "iK", &epoch, &value))
        return NULL;
    if (epoch < 0 || epoch >= p->nepochs) {
        PyErr_SetString(PyExc_ValueError, "set_epoch: unknown epoch");
        return NULL;
    }
    lock(p);
    p->epochs[epoch] = value;
    unlock(p);
    Py_RETURN_NONE;
}

static PyObject *Pump_statements(Pump *p, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= p->nslots) {
        PyErr_SetString(PyExc_ValueError, "statements: unknown slot");
        return NULL;
    }
    lock(p);
    unsigned long long n = p->statements[slot];
    unlock(p);
    return PyLong_FromUnsignedLongLong(n);
}

/* latency(part) -> ([count per bucket, +Inf last], total seconds, count); 0 proxy, 1 upstream. */
static PyObject *Pump_latency(Pump *p, PyObject *arg) {
    long part = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (part != 0 && part != 1) {
        PyErr_SetString(PyExc_ValueError, "latency: part is 0 (proxy) or 1 (upstream)");
        return NULL;
    }
    lock(p);
    Latency h = p->latency[part];
    unlock(p);
    PyObject *bins = PyList_New(p->nbounds + 1);
    if (bins == NULL)
        return NULL;
    for (int i = 0; i <= p->nbounds; i++)
        PyList_SET_ITEM(bins, i, PyLong_FromUnsignedLongLong(h.bins[i]));
    return Py_BuildValue("(NdK)", bins, h.total, h.count);
}

/* handbacks() -> counts by reason (index: 1 client data, 2 upstream data, 3 closed, 4 invalid). */
static PyObject *Pump_handbacks(Pump *p, PyObject *unused) {
    lock(p);
    PyObject *out = Py_BuildValue("(KKKKK)", p->handbacks[0], p->handbacks[1], p->handbacks[2], p->handbacks[3],
                                  p->handbacks[4]);
    unlock(p);
    return out;
}

static PyObject *Pump_standins_served(Pump *p, PyObject *unused) {
    lock(p);
    unsigned long long n = p->standins_served;
    unlock(p);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Pump_attached(Pump *p, PyObject *unused) {
    int n = 0;
    lock(p);
    for (int i = 0; i < p->nlinks; i++)
        if (p->links[i] && p->links[i]->in_use && p->links[i]->state == ATTACHED)
            n++;
    unlock(p);
    return PyLong_FromLong(n);
}

static PyMethodDef Pump_methods[] = {
    {"attach", (PyCFunction)Pump_attach, METH_VARARGS,
     "attach(client_fd, upstream_fd, slot, gated, epoch, epoch_value, state[, standins[, portal_edit[, alias[, "
     "unnamed_parsed[, unnamed_edit]]]]]) -> link: the thread relays both sockets from now on."},
    {"detach", (PyCFunction)Pump_detach, METH_O,
     "detach(link) -> (reason, state, to_client, to_upstream, tail, invalid, chunks, bind_owed, skip, head, "
     "edit_owed, portal_edit, alias, unnamed_parsed, unnamed_edit) or None: take the link back."},
    {"returned", (PyCFunction)Pump_returned, METH_NOARGS, "Links the thread handed back since the last call."},
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS, "An eventfd that is readable when links were handed back."},
    {"slot", (PyCFunction)Pump_slot, METH_NOARGS, "A new statement counter (None when all are taken)."},
    {"epoch", (PyCFunction)Pump_epoch, METH_NOARGS, "A new epoch (None when all are taken)."},
    {"set_epoch", (PyCFunction)Pump_set_epoch, METH_VARARGS, "set_epoch(epoch, value)."},
    {"statements", (PyCFunction)Pump_statements, METH_O, "Statements the thread relayed for a counter."},
    {"latency", (PyCFunction)Pump_latency, METH_O, "The thread's latency histogram (0: proxy, 1: upstream)."},
    {"handbacks", (PyCFunction)Pump_handbacks, METH_NOARGS, "Hand-backs so far, by reason."},
    {"attached", (PyCFunction)Pump_attached, METH_NOARGS, "Links the thread relays now."},
    {"standins_served", (PyCFunction)Pump_standins_served, METH_NOARGS, "Queries the thread sent as stand-ins."},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "Stop the thread (links still attached stay with it, unread)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cowproxy.proxy._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One relay thread for sessions' steady state (see proxy/pump.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cowproxy.proxy._pump",
    "The native relay thread of pass-through sessions (see proxy/pump.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__pump(void) {
    if (PyType_Ready(&PumpType) < 0 || PyType_Ready(&StandinsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&StandinsType);
    if (PyModule_AddObject(m, "Standins", (PyObject *)&StandinsType) < 0) {
        Py_DECREF(&StandinsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
