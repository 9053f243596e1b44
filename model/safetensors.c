/* safetensors — parse and validate safetensors images (memory-mapped files),
 * open a model directory's single or sharded checkpoint, and write files in
 * a streaming way. See safetensors.h for the format and the checks. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"

#define INDEX_MAX_BYTES ((size_t)64 << 20)

typedef struct st_entry {
    char *name;
    duet_tensor_t t;
    uint64_t begin, end; /* relative to the data area */
} st_entry_t;

struct duet_safetensors {
    char *path;
    duet_file_map_t map; /* data == NULL when the image is borrowed */
    bool owns_map;
    st_entry_t *entries; /* sorted by begin */
    size_t n;
    duet_strmap_t *by_name; /* name -> index into entries */
};

/* ---- reading ------------------------------------------------------------ */

static void st_free(duet_safetensors_t *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        duet_free(st->entries[i].name);
    duet_free(st->entries);
    duet_strmap_destroy(&st->by_name);
    if (st->owns_map)
        duet_file_map_close(&st->map);
    duet_free(st->path);
    duet_free(st);
}

void duet_safetensors_destroy(duet_safetensors_t **st_p)
{
    if (!st_p)
        return;
    st_free(*st_p);
    *st_p = NULL;
}

/* Parse one header entry into e (not yet placed in the data area). */
static duet_status_t parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len,
                                 st_entry_t *e)
{
    if (!json_is_object(v))
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': header entry is not an object", path,
                           name);
    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': 'dtype' missing or not a string",
                           path, name);
    if (!duet_dtype_parse(json_string_value(dt), json_string_length(dt), &e->t.dtype))
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': unknown dtype '%s'", path, name,
                           json_string_value(dt));
    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': 'shape' missing or not a list", path,
                           name);
    size_t nd = json_array_size(shape);
    if (nd > DUET_TENSOR_MAX_DIMS)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions, at most %d",
                           path, name, nd, DUET_TENSOR_MAX_DIMS);
    e->t.ndim = (int)nd;
    size_t nbytes = duet_dtype_size(e->t.dtype);
    for (size_t d = 0; d < nd; d++) {
        json_t *x = json_array_get(shape, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return duet_errorf(DUET_ERR_INVALID,
                               "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                               name, d);
        e->t.shape[d] = json_integer_value(x);
        if (duet_mul_overflow(nbytes, (size_t)e->t.shape[d], &nbytes))
            return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': shape overflows the byte size",
                               path, name);
    }
    json_t *off = json_object_get(v, "data_offsets");
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        !json_is_integer(json_array_get(off, 0)) || !json_is_integer(json_array_get(off, 1)) ||
        json_integer_value(json_array_get(off, 0)) < 0 ||
        json_integer_value(json_array_get(off, 1)) < 0)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: tensor '%s': 'data_offsets' must be two non-negative integers",
                           path, name);
    e->begin = (uint64_t)json_integer_value(json_array_get(off, 0));
    e->end = (uint64_t)json_integer_value(json_array_get(off, 1));
    if (e->end < e->begin)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path,
                           name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_len)
        return duet_errorf(DUET_ERR_RANGE,
                           "%s: tensor '%s': data_offsets [%llu, %llu] past the end of the data "
                           "(%llu bytes; file truncated?)",
                           path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                           (unsigned long long)data_len);
    if (e->end - e->begin != nbytes)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: tensor '%s': %s x shape is %zu bytes but data_offsets span %llu",
                           path, name, duet_dtype_name(e->t.dtype), nbytes,
                           (unsigned long long)(e->end - e->begin));
    e->t.nbytes = nbytes;
    return DUET_OK;
}

static int cmp_entry(const void *a, const void *b)
{
    const st_entry_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static duet_status_t parse_image(duet_safetensors_t *st, const uint8_t *data, size_t size)
{
    const char *path = st->path;
    duet_status_t status;
    if (size < 8)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: %zu bytes, too short for a safetensors header (file truncated?)",
                           path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | data[i];
    if (hlen > DUET_SAFETENSORS_MAX_HEADER)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: header length %llu is over the %zu-byte limit (not a safetensors "
                           "file?)",
                           path, (unsigned long long)hlen, DUET_SAFETENSORS_MAX_HEADER);
    if (hlen > size - 8)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: header length %llu runs past the end of the file (%zu bytes; "
                           "truncated?)",
                           path, (unsigned long long)hlen, size);
    if (hlen < 2)
        return duet_errorf(DUET_ERR_INVALID, "%s: header length %llu is too short for JSON", path,
                           (unsigned long long)hlen);
    const uint8_t *data_area = data + 8 + hlen;
    uint64_t data_len = size - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)data + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return duet_errorf(DUET_ERR_INVALID, "%s: malformed header JSON at byte %d: %s", path,
                           8 + jerr.position, jerr.text);
    if (!json_is_object(root)) {
        status = duet_errorf(DUET_ERR_INVALID, "%s: header JSON is not an object", path);
        goto out_decref;
    }
    size_t cap = json_object_size(root);
    st->entries = duet_calloc(cap ? cap : 1, sizeof(st_entry_t));
    if (!st->entries) {
        status = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
        goto out_decref;
    }
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(root, key, klen, v)
    {
        if (klen == strlen("__metadata__") && !memcmp(key, "__metadata__", klen))
            continue;
        if (memchr(key, 0, klen)) {
            status = duet_errorf(DUET_ERR_INVALID, "%s: a tensor name contains a NUL byte", path);
            goto out_decref;
        }
        st_entry_t *e = &st->entries[st->n];
        if ((status = parse_entry(path, key, v, data_len, e)))
            goto out_decref;
        e->t.data = data_area + e->begin;
        if (!(e->name = duet_strndup(key, klen))) {
            status = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
            goto out_decref;
        }
        st->n++;
    }
    qsort(st->entries, st->n, sizeof(st_entry_t), cmp_entry);
    /* Sorted by begin, a tensor overlaps an earlier one iff it begins before
     * the furthest end so far. Zero-length tensors take no bytes. */
    const st_entry_t *furthest = NULL;
    for (size_t i = 0; i < st->n; i++) {
        const st_entry_t *b = &st->entries[i];
        if (b->begin == b->end)
            continue;
        if (furthest && b->begin < furthest->end) {
            status =
                duet_errorf(DUET_ERR_INVALID,
                            "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' "
                            "[%llu, %llu]",
                            path, b->name, (unsigned long long)b->begin, (unsigned long long)b->end,
                            furthest->name, (unsigned long long)furthest->begin,
                            (unsigned long long)furthest->end);
            goto out_decref;
        }
        if (!furthest || b->end > furthest->end)
            furthest = b;
    }
    if (!(st->by_name = duet_strmap_create(st->n))) {
        status = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
        goto out_decref;
    }
    for (size_t i = 0; i < st->n; i++) {
        if ((status = duet_strmap_put(st->by_name, st->entries[i].name, strlen(st->entries[i].name),
                                      (int64_t)i))) {
            status = duet_errorf(status, "%s: out of memory", path);
            goto out_decref;
        }
    }
    status = DUET_OK;
out_decref:
    json_decref(root);
    return status;
}

duet_status_t duet_safetensors_parse(const void *data, size_t size, const char *name,
                                     duet_safetensors_t **out)
{
    duet_safetensors_t *st = duet_calloc(1, sizeof(*st));
    if (!st)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory");
    st->path = duet_strdup(name ? name : "<memory>");
    if (!st->path) {
        st_free(st);
        return duet_errorf(DUET_ERR_NOMEM, "out of memory");
    }
    duet_status_t status = parse_image(st, data, size);
    if (status) {
        st_free(st);
        return status;
    }
    *out = st;
    return DUET_OK;
}

duet_status_t duet_safetensors_open(const char *path, duet_safetensors_t **out)
{
    duet_safetensors_t *st = duet_calloc(1, sizeof(*st));
    if (!st)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory");
    duet_status_t status;
    if (!(st->path = duet_strdup(path))) {
        status = duet_errorf(DUET_ERR_NOMEM, "out of memory");
        goto err_free;
    }
    if ((status = duet_file_map_open(path, &st->map)))
        goto err_free;
    st->owns_map = true;
    if ((status = parse_image(st, st->map.data, st->map.size)))
        goto err_free;
    *out = st;
    return DUET_OK;
err_free:
    st_free(st);
    return status;
}

const char *duet_safetensors_path(const duet_safetensors_t *st)
{
    return st->path;
}

size_t duet_safetensors_count(const duet_safetensors_t *st)
{
    return st->n;
}

const char *duet_safetensors_name_at(const duet_safetensors_t *st, size_t i)
{
    return i < st->n ? st->entries[i].name : NULL;
}

const duet_tensor_t *duet_safetensors_tensor_at(const duet_safetensors_t *st, size_t i)
{
    return i < st->n ? &st->entries[i].t : NULL;
}

const duet_tensor_t *duet_safetensors_find(const duet_safetensors_t *st, const char *name)
{
    int64_t idx;
    if (!st->by_name || !duet_strmap_get(st->by_name, name, strlen(name), &idx))
        return NULL;
    return &st->entries[idx].t;
}

duet_status_t duet_safetensors_get(const duet_safetensors_t *st, const char *name,
                                   duet_tensor_t *out)
{
    const duet_tensor_t *t = duet_safetensors_find(st, name);
    if (!t)
        return duet_errorf(DUET_ERR_NOT_FOUND, "%s: tensor '%s' is missing", st->path, name);
    *out = *t;
    return DUET_OK;
}

/* ---- checkpoint directories --------------------------------------------- */

struct duet_checkpoint {
    char *dir;
    duet_safetensors_t **files;
    size_t n_files;
    /* sharded: tensor name -> file index (from the index's weight_map) */
    duet_strmap_t *weight_map;
};

static char *path_join(const char *dir, const char *name)
{
    duet_buf_t b = {0};
    size_t dl = strlen(dir);
    if (duet_buf_printf(&b, "%s%s%s", dir, (dl && dir[dl - 1] == '/') ? "" : "/", name)) {
        duet_buf_cleanup(&b);
        return NULL;
    }
    return (char *)b.data;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

void duet_checkpoint_destroy(duet_checkpoint_t **ck_p)
{
    if (!ck_p || !*ck_p)
        return;
    duet_checkpoint_t *ck = *ck_p;
    for (size_t i = 0; i < ck->n_files; i++)
        duet_safetensors_destroy(&ck->files[i]);
    duet_free(ck->files);
    duet_strmap_destroy(&ck->weight_map);
    duet_free(ck->dir);
    duet_free(ck);
    *ck_p = NULL;
}

static duet_status_t add_file(duet_checkpoint_t *ck, const char *path)
{
    void *p = duet_realloc_array(ck->files, ck->n_files + 1, sizeof(*ck->files));
    if (!p)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
    ck->files = p;
    duet_status_t st = duet_safetensors_open(path, &ck->files[ck->n_files]);
    if (st)
        return st;
    ck->n_files++;
    return DUET_OK;
}

static duet_status_t open_sharded(duet_checkpoint_t *ck, const char *index_path)
{
    char *text = NULL;
    size_t len;
    duet_status_t st = duet_file_read_all(index_path, INDEX_MAX_BYTES, &text, &len);
    if (st)
        return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    duet_free(text);
    if (!root)
        return duet_errorf(DUET_ERR_INVALID, "%s: malformed JSON at line %d, column %d: %s",
                           index_path, jerr.line, jerr.column, jerr.text);
    duet_strmap_t *file_idx = NULL;
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        st = duet_errorf(DUET_ERR_INVALID, "%s: key 'weight_map' missing or not an object",
                         index_path);
        goto out;
    }
    file_idx = duet_strmap_create(8);
    ck->weight_map = duet_strmap_create(json_object_size(wm));
    if (!file_idx || !ck->weight_map) {
        st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        if (!json_is_string(v)) {
            st = duet_errorf(DUET_ERR_INVALID, "%s: weight_map['%s'] is not a file name",
                             index_path, key);
            goto out;
        }
        const char *fname = json_string_value(v);
        size_t flen = json_string_length(v);
        if (!flen || memchr(fname, '/', flen) || memchr(fname, 0, flen) || !strcmp(fname, ".") ||
            !strcmp(fname, "..")) {
            st = duet_errorf(DUET_ERR_INVALID,
                             "%s: weight_map['%s'] = '%s' is not a file name in the model "
                             "directory",
                             index_path, key, fname);
            goto out;
        }
        int64_t fi;
        if (!duet_strmap_get(file_idx, fname, flen, &fi)) {
            char *path = path_join(ck->dir, fname);
            if (!path) {
                st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", index_path);
                goto out;
            }
            st = add_file(ck, path);
            duet_free(path);
            if (st)
                goto out;
            fi = (int64_t)ck->n_files - 1;
            if ((st = duet_strmap_put(file_idx, fname, flen, fi))) {
                st = duet_errorf(st, "%s: out of memory", index_path);
                goto out;
            }
        }
        if ((st = duet_strmap_put(ck->weight_map, key, strlen(key), fi))) {
            st = duet_errorf(st, "%s: out of memory", index_path);
            goto out;
        }
    }
    if (!ck->n_files)
        st = duet_errorf(DUET_ERR_INVALID, "%s: weight_map names no files", index_path);
out:
    duet_strmap_destroy(&file_idx);
    json_decref(root);
    return st;
}

duet_status_t duet_checkpoint_open(const char *dir, duet_checkpoint_t **out)
{
    duet_checkpoint_t *ck = duet_calloc(1, sizeof(*ck));
    char *index = NULL, *single = NULL;
    duet_status_t st;
    if (!ck || !(ck->dir = duet_strdup(dir)) ||
        !(index = path_join(dir, "model.safetensors.index.json")) ||
        !(single = path_join(dir, "model.safetensors"))) {
        st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", dir);
        goto err;
    }
    if (file_exists(index)) {
        st = open_sharded(ck, index);
    } else if (file_exists(single)) {
        st = add_file(ck, single);
    } else {
        st = duet_errorf(DUET_ERR_NOT_FOUND,
                         "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    if (st)
        goto err;
    duet_free(index);
    duet_free(single);
    *out = ck;
    return DUET_OK;
err:
    duet_free(index);
    duet_free(single);
    duet_checkpoint_destroy(&ck);
    return st;
}

duet_status_t duet_checkpoint_get(const duet_checkpoint_t *ck, const char *name, duet_tensor_t *out,
                                  const char **path_out)
{
    const duet_safetensors_t *f = NULL;
    if (ck->weight_map) {
        int64_t fi;
        if (!duet_strmap_get(ck->weight_map, name, strlen(name), &fi))
            return duet_errorf(DUET_ERR_NOT_FOUND,
                               "%s/model.safetensors.index.json: tensor '%s' is missing", ck->dir,
                               name);
        f = ck->files[fi];
        if (!duet_safetensors_find(f, name))
            return duet_errorf(DUET_ERR_NOT_FOUND,
                               "%s: tensor '%s' is missing (the index places it in this file)",
                               f->path, name);
    } else {
        f = ck->files[0];
        if (!duet_safetensors_find(f, name))
            return duet_errorf(DUET_ERR_NOT_FOUND, "%s: tensor '%s' is missing", f->path, name);
    }
    *out = *duet_safetensors_find(f, name);
    if (path_out)
        *path_out = f->path;
    return DUET_OK;
}

bool duet_checkpoint_has(const duet_checkpoint_t *ck, const char *name)
{
    if (ck->weight_map) {
        int64_t fi;
        return duet_strmap_get(ck->weight_map, name, strlen(name), &fi) &&
               duet_safetensors_find(ck->files[fi], name);
    }
    return duet_safetensors_find(ck->files[0], name) != NULL;
}

size_t duet_checkpoint_file_count(const duet_checkpoint_t *ck)
{
    return ck->n_files;
}

const duet_safetensors_t *duet_checkpoint_file(const duet_checkpoint_t *ck, size_t i)
{
    return i < ck->n_files ? ck->files[i] : NULL;
}

/* ---- writing ------------------------------------------------------------ */

struct duet_safetensors_writer {
    char *path;
    FILE *f;
    json_t *header;
    size_t data_size; /* declared */
    size_t written;   /* data bytes written */
    bool header_written;
};

duet_status_t duet_safetensors_writer_create(const char *path, duet_safetensors_writer_t **out)
{
    duet_safetensors_writer_t *w = duet_calloc(1, sizeof(*w));
    duet_status_t st;
    if (!w || !(w->path = duet_strdup(path)) || !(w->header = json_object())) {
        st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
        goto err;
    }
    json_t *meta = json_pack("{s:s}", "format", "pt");
    if (!meta || json_object_set_new(w->header, "__metadata__", meta)) {
        st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
        goto err;
    }
    if (!(w->f = fopen(path, "wb"))) {
        st = duet_errorf(DUET_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto err;
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    *out = w;
    return DUET_OK;
err:
    if (w) {
        json_decref(w->header);
        duet_free(w->path);
        duet_free(w);
    }
    return st;
}

duet_status_t duet_safetensors_writer_add(duet_safetensors_writer_t *w, const char *name,
                                          duet_dtype_t dtype, int ndim, const int64_t *shape)
{
    if (w->header_written)
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s' added after data was written",
                           w->path, name);
    if (ndim < 0 || ndim > DUET_TENSOR_MAX_DIMS || (unsigned)dtype >= DUET_DTYPE_COUNT)
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': bad dtype or ndim", w->path, name);
    if (json_object_get(w->header, name))
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s' added twice", w->path, name);
    size_t nbytes = duet_dtype_size(dtype);
    json_t *sh = json_array();
    if (!sh)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", w->path);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || duet_mul_overflow(nbytes, (size_t)shape[d], &nbytes)) {
            json_decref(sh);
            return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': bad shape", w->path, name);
        }
        json_array_append_new(sh, json_integer(shape[d]));
    }
    json_t *e =
        json_pack("{s:s,s:o,s:[I,I]}", "dtype", duet_dtype_name(dtype), "shape", sh, "data_offsets",
                  (json_int_t)w->data_size, (json_int_t)(w->data_size + nbytes));
    if (!e || json_object_set_new(w->header, name, e))
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", w->path);
    w->data_size += nbytes;
    return DUET_OK;
}

size_t duet_safetensors_writer_data_size(const duet_safetensors_writer_t *w)
{
    return w->data_size;
}

static duet_status_t write_header(duet_safetensors_writer_t *w)
{
    char *js = json_dumps(w->header, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!js)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", w->path);
    size_t len = strlen(js);
    size_t padded = (len + 7) & ~(size_t)7; /* keeps the data area 8-byte aligned */
    uint8_t hl[8];
    for (int i = 0; i < 8; i++)
        hl[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(hl, 1, 8, w->f) == 8 && fwrite(js, 1, len, w->f) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', w->f) != EOF;
    free(js);
    if (!ok)
        return duet_errorf(DUET_ERR_IO, "%s: write error: %s", w->path, strerror(errno));
    w->header_written = true;
    return DUET_OK;
}

duet_status_t duet_safetensors_writer_write(duet_safetensors_writer_t *w, const void *data,
                                            size_t n)
{
    duet_status_t st;
    if (!w->header_written && (st = write_header(w)))
        return st;
    if (n > w->data_size - w->written)
        return duet_errorf(DUET_ERR_RANGE, "%s: more data written than the tensors declared",
                           w->path);
    if (n && fwrite(data, 1, n, w->f) != n)
        return duet_errorf(DUET_ERR_IO, "%s: write error: %s", w->path, strerror(errno));
    w->written += n;
    return DUET_OK;
}

duet_status_t duet_safetensors_writer_finish(duet_safetensors_writer_t **w_p)
{
    duet_safetensors_writer_t *w = *w_p;
    duet_status_t st = DUET_OK;
    if (!w->header_written)
        st = write_header(w);
    if (!st && w->written != w->data_size)
        st = duet_errorf(DUET_ERR_INVALID, "%s: %zu data bytes written, %zu declared", w->path,
                         w->written, w->data_size);
    if (!st && fflush(w->f) != 0)
        st = duet_errorf(DUET_ERR_IO, "%s: write error: %s", w->path, strerror(errno));
    if (st) {
        duet_safetensors_writer_destroy(w_p);
        return st;
    }
    if (fclose(w->f) != 0)
        st = duet_errorf(DUET_ERR_IO, "%s: close: %s", w->path, strerror(errno));
    w->f = NULL;
    json_decref(w->header);
    duet_free(w->path);
    duet_free(w);
    *w_p = NULL;
    return st;
}

void duet_safetensors_writer_destroy(duet_safetensors_writer_t **w_p)
{
    if (!w_p || !*w_p)
        return;
    duet_safetensors_writer_t *w = *w_p;
    if (w->f) {
        fclose(w->f);
        unlink(w->path);
    }
    json_decref(w->header);
    duet_free(w->path);
    duet_free(w);
    *w_p = NULL;
}
