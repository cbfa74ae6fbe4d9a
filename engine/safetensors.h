/* Memory-mapped, fully validated safetensors reader: one file, or the shards of a model
 * directory listed by model.safetensors.index.json. A malformed file is an error that names the
 * offending tensor; nothing in a file can make the reader crash. */
#ifndef LLMGATE_ENGINE_SAFETENSORS_H
#define LLMGATE_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* The dtypes the engine accepts on disk; anything else is rejected at open. */
enum st_dtype { ST_F32, ST_F16, ST_BF16 };

#define ST_MAX_DIMS 8

/* One tensor: a view into the mapping, valid until the owning file is closed. */
struct st_tensor {
    char *name;          /* tensor name, owned by the file */
    enum st_dtype dtype; /* on-disk element type */
    int ndim;            /* 0..ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* first element inside the mapping (little-endian) */
    size_t nbytes;    /* product(shape) * st_dtype_size(dtype) */
};

/* One mapped .safetensors file. */
struct st_file {
    char *path;
    void *map; /* whole file, PROT_READ, MAP_PRIVATE */
    size_t map_len;
    struct st_tensor *tensors; /* n of them, in header order */
    size_t n;
};

/* Several files opened together (a sharded checkpoint or one single file). */
struct st_set {
    struct st_file **files;
    size_t n_files;
};

/* Bytes per element of dtype (4, 2, 2). */
size_t st_dtype_size(enum st_dtype dtype);

/* "F32", "F16" or "BF16". */
const char *st_dtype_name(enum st_dtype dtype);

/* Maps and validates path: header length within the file, header a JSON object whose
 * members (besides "__metadata__") are tensors with a known dtype, a shape whose element count
 * times the dtype size equals its data_offsets span, offsets inside the data region and no two
 * tensors overlapping. Returns 0 and *out (free with st_file_close), or -1 with a message in err
 * that names the file and, where one is at fault, the tensor. */
int st_file_open(const char *path, struct st_file **out, char *err, size_t errlen);

/* Same checks over a caller-owned buffer (not copied; must outlive the file). For tests and
 * in-memory checkpoints. */
int st_file_open_mem(const void *buf, size_t len, const char *label, struct st_file **out,
                     char *err, size_t errlen);

/* Unmaps and frees the file. NULL is a no-op. */
void st_file_close(struct st_file *f);

/* The tensor called name, or NULL. */
const struct st_tensor *st_file_find(const struct st_file *f, const char *name);

/* Opens the checkpoint of a model directory: dir/model.safetensors.index.json (every shard it
 * names in weight_map, each tensor checked to live in the shard the map says) or else
 * dir/model.safetensors. Returns 0 and *out (free with st_set_close), or -1 with err. */
int st_set_open_dir(const char *dir, struct st_set **out, char *err, size_t errlen);

/* Closes every file of the set. NULL is a no-op. */
void st_set_close(struct st_set *s);

/* The tensor called name in any file of the set, or NULL. */
const struct st_tensor *st_set_find(const struct st_set *s, const char *name);

#endif
