/* safetensors — read (memory-mapped, validated) and write safetensors files,
 * and open a Hugging Face model directory's tensors, whether in one
 * model.safetensors or sharded through model.safetensors.index.json.
 *
 * Layout of a file: 8-byte little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data area; offsets are relative to the data area. Before a
 * handle is returned every tensor is checked: known dtype, dtype x shape =
 * end - begin (overflow-checked), inside the data area, no two overlapping.
 * Errors name the file, the tensor and the problem.
 *
 * Tensor data pointers point into the mapping: valid while the handle lives.
 * Data may be unaligned when a file packs tensors of different element sizes
 * back to back; duet_tensor_aligned() tells (model loading requires it). */
#ifndef DUET_MODEL_SAFETENSORS_H
#define DUET_MODEL_SAFETENSORS_H

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest header accepted (the safetensors format's own limit). */
#define DUET_SAFETENSORS_MAX_HEADER ((size_t)100 << 20)

typedef struct duet_safetensors duet_safetensors_t;

/* Parse and validate a safetensors image held in memory. The image is
 * borrowed: it must outlive the handle. `name` (a path) is used in error
 * details. The caller frees the handle with duet_safetensors_destroy. */
DUET_API duet_status_t duet_safetensors_parse(const void *data, size_t size, const char *name,
                                              duet_safetensors_t **out);
/* Map `path` read-only and parse it; the handle owns the mapping. */
DUET_API duet_status_t duet_safetensors_open(const char *path, duet_safetensors_t **out);
DUET_API void duet_safetensors_destroy(duet_safetensors_t **st_p);

DUET_API const char *duet_safetensors_path(const duet_safetensors_t *st);
/* Number of tensors (without __metadata__); tensors are indexed in the order
 * of their data offsets. */
DUET_API size_t duet_safetensors_count(const duet_safetensors_t *st);
DUET_API const char *duet_safetensors_name_at(const duet_safetensors_t *st, size_t i);
DUET_API const duet_tensor_t *duet_safetensors_tensor_at(const duet_safetensors_t *st, size_t i);
/* NULL if the file has no tensor of that name. The pointer lives as long as
 * the handle. */
DUET_API const duet_tensor_t *duet_safetensors_find(const duet_safetensors_t *st, const char *name);
/* Copy of the tensor, or DUET_ERR_NOT_FOUND with a detail naming file and
 * tensor. */
DUET_API duet_status_t duet_safetensors_get(const duet_safetensors_t *st, const char *name,
                                            duet_tensor_t *out);

/* true if t->data is aligned to its element size. */
static inline bool duet_tensor_aligned(const duet_tensor_t *t)
{
    size_t a = duet_dtype_size(t->dtype);
    return a == 0 || ((uintptr_t)t->data % a) == 0;
}

/* ---- a model directory's tensors ---------------------------------------- */

typedef struct duet_checkpoint duet_checkpoint_t;

/* Open the safetensors of a HF model directory: model.safetensors.index.json
 * (weight_map name -> shard file in the same directory) if present, else
 * model.safetensors. Every file is mapped and validated. */
DUET_API duet_status_t duet_checkpoint_open(const char *dir, duet_checkpoint_t **out);
DUET_API void duet_checkpoint_destroy(duet_checkpoint_t **ck_p);
/* Look a tensor up by HF name. On success *out is a copy (data points into
 * the mapping) and *path_out (optional) the file holding it. Absent:
 * DUET_ERR_NOT_FOUND with a detail naming the directory (or the shard the
 * index names) and the tensor. */
DUET_API duet_status_t duet_checkpoint_get(const duet_checkpoint_t *ck, const char *name,
                                           duet_tensor_t *out, const char **path_out);
DUET_API bool duet_checkpoint_has(const duet_checkpoint_t *ck, const char *name);
DUET_API size_t duet_checkpoint_file_count(const duet_checkpoint_t *ck);
DUET_API const duet_safetensors_t *duet_checkpoint_file(const duet_checkpoint_t *ck, size_t i);

/* ---- writing ------------------------------------------------------------ */

/* Streaming writer: declare every tensor with _add, then append their bytes
 * in declaration order with _write (any chunking), then _finish. The header
 * is written on the first _write (or at _finish), padded to 8 bytes, with
 * __metadata__ {"format": "pt"}. Nothing is held in memory but the header. */
typedef struct duet_safetensors_writer duet_safetensors_writer_t;

DUET_API duet_status_t duet_safetensors_writer_create(const char *path,
                                                      duet_safetensors_writer_t **out);
DUET_API duet_status_t duet_safetensors_writer_add(duet_safetensors_writer_t *w, const char *name,
                                                   duet_dtype_t dtype, int ndim,
                                                   const int64_t *shape);
DUET_API duet_status_t duet_safetensors_writer_write(duet_safetensors_writer_t *w, const void *data,
                                                     size_t n);
/* Total data bytes declared so far. */
DUET_API size_t duet_safetensors_writer_data_size(const duet_safetensors_writer_t *w);
/* Check that exactly the declared bytes were written, flush and close. The
 * writer is freed (and *w_p cleared) whatever the result. */
DUET_API duet_status_t duet_safetensors_writer_finish(duet_safetensors_writer_t **w_p);
/* Abandon a writer: close and remove the partial file. Accepts NULL. */
DUET_API void duet_safetensors_writer_destroy(duet_safetensors_writer_t **w_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_MODEL_SAFETENSORS_H */
