/*
 * recent: a recd strategy written in C, against plugin-api/include/recd_plugin.h only.
 *
 * For each user of the `interactions` input, the `k` newest items (by the time an item was
 * first bought by anyone) that the user has not bought. Cancelled lines are ignored.
 * Score: k - rank, so the newest item scores highest. No model.
 *
 * Input columns: user_id (utf8), item_id (utf8), ts (timestamp or int64, any unit),
 * cancelled (bool, optional). Params (JSON object): {"k": 1..1000}, default 10.
 *
 * Build: cc -std=c11 -O2 -shared -fPIC -I plugin-api/include plugins/recent/recent.c \
 *           -o librecd_recent.so
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "recd_plugin.h"

#define ROWS_PER_BATCH 65536

#ifndef RECENT_VERSION
#define RECENT_VERSION "0.1.0"
#endif

static void set_error(RecdError *err, int32_t code, const char *msg) {
    if (!err) return;
    err->code = code;
    snprintf(err->message, RECD_ERROR_MESSAGE_CAP, "%s", msg);
}

/* ---- params ------------------------------------------------------------------------ */

typedef struct {
    long k;
} Recent;

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

/* Accepts {} or {"k": N}; anything else is an error naming the key. */
static int parse_params(const uint8_t *json, size_t len, Recent *out, RecdError *err) {
    const char *p = (const char *)json, *end = p + len;
    out->k = 10;
    if (len == 0) return RECD_OK;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') { set_error(err, RECD_INVALID_PARAMS, "params: expected a JSON object"); return RECD_INVALID_PARAMS; }
    p = skip_ws(p + 1, end);
    while (p < end && *p != '}') {
        char key[64] = {0}, msg[160];
        size_t n = 0;
        if (*p != '"') { set_error(err, RECD_INVALID_PARAMS, "params: expected a key"); return RECD_INVALID_PARAMS; }
        for (p++; p < end && *p != '"' && n < sizeof key - 1; p++) key[n++] = *p;
        p = skip_ws(p + 1, end);
        if (p >= end || *p != ':') { set_error(err, RECD_INVALID_PARAMS, "params: expected ':'"); return RECD_INVALID_PARAMS; }
        p = skip_ws(p + 1, end);
        if (strcmp(key, "k") != 0) {
            snprintf(msg, sizeof msg, "params: unknown field `%s`, expected `k`", key);
            set_error(err, RECD_INVALID_PARAMS, msg);
            return RECD_INVALID_PARAMS;
        }
        char *num_end;
        long k = strtol(p, &num_end, 10);
        if (num_end == p || k < 1 || k > 1000) {
            set_error(err, RECD_INVALID_PARAMS, "params.k: must be an integer in 1..=1000");
            return RECD_INVALID_PARAMS;
        }
        out->k = k;
        p = skip_ws(num_end, end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    return RECD_OK;
}

/* ---- reading Arrow columns ---------------------------------------------------------- */

typedef struct {
    const struct ArrowArray *array;
    const struct ArrowSchema *schema;
} Column;

static int find_column(const RecdTable *t, const char *name, Column *out) {
    for (int64_t i = 0; i < t->schema.n_children; i++) {
        if (strcmp(t->schema.children[i]->name, name) == 0) {
            out->array = t->array.children[i];
            out->schema = t->schema.children[i];
            return 1;
        }
    }
    return 0;
}

static int is_valid(const Column *c, int64_t row) {
    const uint8_t *bits = (const uint8_t *)c->array->buffers[0];
    int64_t i = row + c->array->offset;
    return bits == NULL || (bits[i / 8] >> (i % 8)) & 1;
}

static const char *utf8_at(const Column *c, int64_t row, int32_t *len) {
    const int32_t *offsets = (const int32_t *)c->array->buffers[1];
    const char *data = (const char *)c->array->buffers[2];
    int64_t i = row + c->array->offset;
    *len = offsets[i + 1] - offsets[i];
    return data + offsets[i];
}

static int64_t int64_at(const Column *c, int64_t row) {
    return ((const int64_t *)c->array->buffers[1])[row + c->array->offset];
}

static int bool_at(const Column *c, int64_t row) {
    const uint8_t *bits = (const uint8_t *)c->array->buffers[1];
    int64_t i = row + c->array->offset;
    return (bits[i / 8] >> (i % 8)) & 1;
}

/* ---- a string -> index hash table ---------------------------------------------------- */

typedef struct {
    char **keys;
    int32_t *values;
    size_t cap, len;
} Table;

static uint64_t hash(const char *s, int32_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static int table_init(Table *t, size_t cap) {
    t->cap = cap;
    t->len = 0;
    t->keys = calloc(cap, sizeof(char *));
    t->values = calloc(cap, sizeof(int32_t));
    return t->keys && t->values;
}

static void table_free(Table *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->keys[i]);
    free(t->keys);
    free(t->values);
}

/* The index of `s`, inserting it with index `t->len` if new; -1 when full or out of memory. */
static int32_t table_intern(Table *t, const char *s, int32_t n) {
    size_t i = hash(s, n) % t->cap;
    while (t->keys[i]) {
        if ((int32_t)strlen(t->keys[i]) == n && memcmp(t->keys[i], s, n) == 0) return t->values[i];
        i = (i + 1) % t->cap;
    }
    if (t->len * 2 >= t->cap) return -1;
    char *copy = malloc((size_t)n + 1);
    if (!copy) return -1;
    memcpy(copy, s, n);
    copy[n] = 0;
    t->keys[i] = copy;
    t->values[i] = (int32_t)t->len;
    return (int32_t)t->len++;
}

/* ---- building output batches ---------------------------------------------------------- */

typedef struct {
    int32_t *offsets;
    char *data;
    size_t data_len, data_cap;
    const void *buffers[3];
} Utf8Builder;

typedef struct {
    Utf8Builder user, item;
    float *scores;
    const void *score_buffers[2];
    const void *struct_buffers[1];
    struct ArrowArray children[3];
    struct ArrowArray *child_ptrs[3];
    int64_t len;
} Batch;

typedef struct {
    struct ArrowSchema children[3];
    struct ArrowSchema *child_ptrs[3];
} BatchSchema;

static void release_child(struct ArrowArray *a) { a->release = NULL; }

static void release_batch(struct ArrowArray *a) {
    Batch *b = a->private_data;
    for (int i = 0; i < 3; i++)
        if (b->children[i].release) b->children[i].release(&b->children[i]);
    free(b->user.offsets);
    free(b->user.data);
    free(b->item.offsets);
    free(b->item.data);
    free(b->scores);
    free(b);
    a->release = NULL;
}

static void release_child_schema(struct ArrowSchema *s) { s->release = NULL; }

static void release_schema(struct ArrowSchema *s) {
    BatchSchema *bs = s->private_data;
    for (int i = 0; i < 3; i++)
        if (bs->children[i].release) bs->children[i].release(&bs->children[i]);
    free(bs);
    s->release = NULL;
}

static int utf8_push(Utf8Builder *b, int64_t row, const char *s, size_t n) {
    if (b->data_len + n > b->data_cap) {
        size_t cap = (b->data_cap + n) * 2;
        char *data = realloc(b->data, cap);
        if (!data) return 0;
        b->data = data;
        b->data_cap = cap;
    }
    memcpy(b->data + b->data_len, s, n);
    b->data_len += n;
    b->offsets[row + 1] = (int32_t)b->data_len;
    return 1;
}

static Batch *batch_new(void) {
    Batch *b = calloc(1, sizeof(Batch));
    if (!b) return NULL;
    b->user.offsets = calloc(ROWS_PER_BATCH + 1, sizeof(int32_t));
    b->item.offsets = calloc(ROWS_PER_BATCH + 1, sizeof(int32_t));
    b->scores = calloc(ROWS_PER_BATCH, sizeof(float));
    if (!b->user.offsets || !b->item.offsets || !b->scores) {
        free(b->user.offsets);
        free(b->item.offsets);
        free(b->scores);
        free(b);
        return NULL;
    }
    return b;
}

static void utf8_child(struct ArrowArray *c, Utf8Builder *u, int64_t len) {
    u->buffers[0] = NULL;
    u->buffers[1] = u->offsets;
    u->buffers[2] = u->data ? (const void *)u->data : (const void *)u->offsets; /* never NULL */
    *c = (struct ArrowArray){.length = len, .n_buffers = 3, .buffers = u->buffers, .release = release_child};
}

/* Hands the batch to the host (which takes ownership). */
static int32_t emit_batch(const RecdHost *host, Batch *b, RecdError *err) {
    utf8_child(&b->children[0], &b->user, b->len);
    utf8_child(&b->children[1], &b->item, b->len);
    b->score_buffers[0] = NULL;
    b->score_buffers[1] = b->scores;
    b->children[2] = (struct ArrowArray){.length = b->len, .n_buffers = 2, .buffers = b->score_buffers, .release = release_child};
    for (int i = 0; i < 3; i++) b->child_ptrs[i] = &b->children[i];
    b->struct_buffers[0] = NULL;
    struct ArrowArray array = {
        .length = b->len, .n_buffers = 1, .n_children = 3, .buffers = b->struct_buffers,
        .children = b->child_ptrs, .release = release_batch, .private_data = b,
    };
    BatchSchema *bs = calloc(1, sizeof(BatchSchema));
    if (!bs) {
        release_batch(&array);
        set_error(err, RECD_INTERNAL, "out of memory");
        return RECD_INTERNAL;
    }
    const char *names[3] = {RECD_OUTPUT_USER, RECD_OUTPUT_ITEM, RECD_OUTPUT_SCORE};
    const char *formats[3] = {"u", "u", "f"};
    for (int i = 0; i < 3; i++) {
        bs->children[i] = (struct ArrowSchema){.format = formats[i], .name = names[i], .release = release_child_schema};
        bs->child_ptrs[i] = &bs->children[i];
    }
    struct ArrowSchema schema = {
        .format = "+s", .name = "", .n_children = 3, .children = bs->child_ptrs,
        .release = release_schema, .private_data = bs,
    };
    int32_t rc = host->emit(host->ctx, &schema, &array, err);
    /* The host moved both on success; release whatever it did not take. */
    if (array.release) array.release(&array);
    if (schema.release) schema.release(&schema);
    return rc;
}

/* ---- the strategy ---------------------------------------------------------------------- */

typedef struct {
    int64_t first_seen;
    int32_t index;
} ItemAge;

static const char **g_item_names; /* for the qsort tie-break only */

static int newest_first(const void *a, const void *b) {
    const ItemAge *x = a, *y = b;
    if (x->first_seen != y->first_seen) return x->first_seen < y->first_seen ? 1 : -1;
    return strcmp(g_item_names[x->index], g_item_names[y->index]);
}

static int32_t fail(RecdError *err, int32_t code, const char *msg) {
    set_error(err, code, msg);
    return code;
}

static int32_t run_recent(const Recent *self, const RecdHost *host, const RecdTable *t, RecdError *err) {
    Column user, item, ts, cancelled = {0};
    int has_cancelled = find_column(t, "cancelled", &cancelled);
    if (!find_column(t, "user_id", &user) || !find_column(t, "item_id", &item) || !find_column(t, "ts", &ts))
        return fail(err, RECD_INVALID_INPUT, "input `interactions` needs columns user_id, item_id and ts");
    if (strcmp(user.schema->format, "u") || strcmp(item.schema->format, "u"))
        return fail(err, RECD_INVALID_INPUT, "user_id and item_id must be utf8 (format \"u\")");
    if (strncmp(ts.schema->format, "ts", 2) && strcmp(ts.schema->format, "l"))
        return fail(err, RECD_INVALID_INPUT, "ts must be a timestamp or int64");
    if (has_cancelled && strcmp(cancelled.schema->format, "b"))
        return fail(err, RECD_INVALID_INPUT, "cancelled must be boolean");

    int64_t rows = t->array.length;
    size_t cap = (size_t)rows * 2 + 16;
    Table users, items;
    int32_t *row_user = malloc(sizeof(int32_t) * (size_t)(rows + 1));
    int32_t *row_item = malloc(sizeof(int32_t) * (size_t)(rows + 1));
    int64_t *first_seen = malloc(sizeof(int64_t) * (size_t)(rows + 1));
    if (!table_init(&users, cap) || !table_init(&items, cap) || !row_user || !row_item || !first_seen)
        return fail(err, RECD_INTERNAL, "out of memory");

    for (int64_t r = 0; r < rows; r++) {
        row_user[r] = row_item[r] = -1;
        if (!is_valid(&user, r) || !is_valid(&item, r) || !is_valid(&ts, r)) continue;
        if (has_cancelled && is_valid(&cancelled, r) && bool_at(&cancelled, r)) continue;
        int32_t n;
        const char *s = utf8_at(&user, r, &n);
        row_user[r] = table_intern(&users, s, n);
        s = utf8_at(&item, r, &n);
        size_t known = items.len;
        int32_t i = table_intern(&items, s, n);
        row_item[r] = i;
        if (i < 0 || row_user[r] < 0) return fail(err, RECD_INTERNAL, "out of memory");
        int64_t when = int64_at(&ts, r);
        if (items.len > known || when < first_seen[i]) first_seen[i] = when;
    }

    /* names by index, for output and tie-breaks */
    const char **item_names = calloc(items.len + 1, sizeof(char *));
    const char **user_names = calloc(users.len + 1, sizeof(char *));
    ItemAge *order = calloc(items.len + 1, sizeof(ItemAge));
    int32_t *bought_by = calloc(items.len + 1, sizeof(int32_t)); /* user index + 1 who bought it last checked */
    int32_t *next_row = malloc(sizeof(int32_t) * (size_t)(rows + 1));   /* rows of one user, chained */
    int32_t *first_row = malloc(sizeof(int32_t) * (users.len + 1));
    if (!item_names || !user_names || !order || !bought_by || !next_row || !first_row)
        return fail(err, RECD_INTERNAL, "out of memory");
    for (size_t i = 0; i < items.cap; i++)
        if (items.keys[i]) item_names[items.values[i]] = items.keys[i];
    for (size_t i = 0; i < users.cap; i++)
        if (users.keys[i]) user_names[users.values[i]] = users.keys[i];
    for (size_t i = 0; i < items.len; i++) order[i] = (ItemAge){first_seen[i], (int32_t)i};
    g_item_names = item_names;
    qsort(order, items.len, sizeof(ItemAge), newest_first);
    for (size_t u = 0; u < users.len; u++) first_row[u] = -1;
    for (int64_t r = rows - 1; r >= 0; r--) {
        if (row_user[r] < 0) continue;
        next_row[r] = first_row[row_user[r]];
        first_row[row_user[r]] = (int32_t)r;
    }

    int32_t rc = RECD_OK;
    Batch *batch = batch_new();
    if (!batch) rc = fail(err, RECD_INTERNAL, "out of memory");
    for (size_t u = 0; u < users.len && rc == RECD_OK; u++) {
        if (u % 1024 == 0 && host->is_cancelled(host->ctx)) { rc = fail(err, RECD_CANCELLED, "cancelled"); break; }
        for (int32_t r = first_row[u]; r >= 0; r = next_row[r]) bought_by[row_item[r]] = (int32_t)u + 1;
        long rank = 0;
        for (size_t o = 0; o < items.len && rank < self->k; o++) {
            int32_t i = order[o].index;
            if (bought_by[i] == (int32_t)u + 1) continue;
            if (batch->len == ROWS_PER_BATCH) {
                rc = emit_batch(host, batch, err);
                batch = rc == RECD_OK ? batch_new() : NULL;
                if (!batch) { if (rc == RECD_OK) rc = fail(err, RECD_INTERNAL, "out of memory"); break; }
            }
            const char *un = user_names[u], *in = item_names[i];
            if (!utf8_push(&batch->user, batch->len, un, strlen(un)) || !utf8_push(&batch->item, batch->len, in, strlen(in))) {
                rc = fail(err, RECD_INTERNAL, "out of memory");
                break;
            }
            batch->scores[batch->len++] = (float)(self->k - rank);
            rank++;
        }
        host->progress(host->ctx, u + 1, users.len);
    }
    if (rc == RECD_OK && batch && batch->len > 0) {
        rc = emit_batch(host, batch, err);
        batch = NULL;
    }
    if (batch) {
        struct ArrowArray unused = {.release = release_batch, .private_data = batch};
        for (int i = 0; i < 3; i++) batch->children[i].release = NULL;
        release_batch(&unused);
    }
    char line[128];
    snprintf(line, sizeof line, "recent: %zu users, %zu items", users.len, items.len);
    host->log(host->ctx, RECD_LOG_INFO, (const uint8_t *)line, strlen(line));

    free(item_names); free(user_names); free(order); free(bought_by); free(next_row); free(first_row);
    free(row_user); free(row_item); free(first_seen);
    table_free(&users);
    table_free(&items);
    return rc;
}

/* ---- entry points ------------------------------------------------------------------- */

static int32_t create(const uint8_t *params, size_t len, void **instance, RecdError *err) {
    Recent *self = calloc(1, sizeof(Recent));
    if (!self) return fail(err, RECD_INTERNAL, "out of memory");
    int32_t rc = parse_params(params, len, self, err);
    if (rc != RECD_OK) { free(self); return rc; }
    *instance = self;
    return RECD_OK;
}

static int32_t run(void *instance, const RecdHost *host, RecdTable *inputs, size_t n_inputs, RecdError *err) {
    const RecdTable *interactions = NULL;
    for (size_t i = 0; i < n_inputs; i++)
        if (strcmp(inputs[i].name, "interactions") == 0) interactions = &inputs[i];
    int32_t rc = interactions ? run_recent(instance, host, interactions, err)
                              : fail(err, RECD_INVALID_INPUT, "missing input table `interactions`");
    /* Inputs were moved to us: release them all. */
    for (size_t i = 0; i < n_inputs; i++) {
        if (inputs[i].array.release) inputs[i].array.release(&inputs[i].array);
        if (inputs[i].schema.release) inputs[i].schema.release(&inputs[i].schema);
    }
    return rc;
}

static void destroy(void *instance) { free(instance); }

static const RecdPluginV1 DESCRIPTOR = {
    .abi_major = RECD_ABI_MAJOR,
    .abi_minor = RECD_ABI_MINOR,
    .name = "recent",
    .version = RECENT_VERSION,
    .create = create,
    .run = run,
    .destroy = destroy,
};

RECD_PLUGIN_EXPORT const RecdPluginV1 *recd_plugin_entry(void) { return &DESCRIPTOR; }
