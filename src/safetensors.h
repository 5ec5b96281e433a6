/*
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * naming every tensor (dtype, shape, data_offsets relative to the data
 * region), then the data.  Files are mmap'ed read-only and tensors point
 * into the mapping, so weights are never copied.
 *
 * The header parser trusts nothing: every length, shape and offset is
 * bounds- and overflow-checked, and errors name the file and the tensor.
 */
#ifndef LLM_SAFETENSORS_H
#define LLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS        8
/* The format caps the header at 100 MB; anything larger is hostile. */
#define ST_MAX_HEADER_SIZE (100u * 1024u * 1024u)

typedef enum {
    ST_F64 = 0, ST_F32, ST_F16, ST_BF16,
    ST_I64, ST_I32, ST_I16, ST_I8,
    ST_U64, ST_U32, ST_U16, ST_U8,
    ST_BOOL, ST_F8_E4M3, ST_F8_E5M2
} st_dtype;

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

typedef struct {
    char       *name;
    st_dtype    dtype;
    int         ndim;
    int64_t     shape[ST_MAX_DIMS];
    uint64_t    offset;           /* begin, relative to the data region */
    uint64_t    nbytes;
    const void *data;             /* into the mapping; NULL before mapping */
    const char *file;             /* path of the file holding it */
} st_tensor;

/*
 * Parses a header (json, json_len bytes, not necessarily NUL-terminated)
 * whose data region holds data_len bytes.  On success *tensors is an array
 * of *n_tensors entries (data/file unset); free with st_tensors_free().
 * file_label names the file in error messages.  Returns 0 or -1 with err.
 */
int st_parse_header(const char *json, size_t json_len, uint64_t data_len,
                    const char *file_label, st_tensor **tensors,
                    int *n_tensors, char *err, size_t errlen);
void st_tensors_free(st_tensor *t, int n);

typedef struct {
    char      *path;
    void      *map;
    size_t     size;
    st_tensor *tensors;
    int        n_tensors;
} st_file;

/* Maps a file and parses its header; NULL with err naming the file. */
st_file *st_file_open(const char *path, char *err, size_t errlen);
void st_file_close(st_file *f);
const st_tensor *st_file_find(const st_file *f, const char *name);

/* A model's weights: model.safetensors, or the shards that
 * model.safetensors.index.json names. */
typedef struct {
    st_file **files;
    int       n_files;
} st_set;

/* Opens the weights of a model directory.  With an index, every shard it
 * names must open and hold the tensors the index assigns to it. */
st_set *st_set_open(const char *model_dir, char *err, size_t errlen);
void st_set_close(st_set *s);
const st_tensor *st_set_find(const st_set *s, const char *name);

#endif
