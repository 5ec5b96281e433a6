/*
 * safetensors reader: header parsing with full bounds checking, mmap of
 * single files and of the shards of a model.safetensors.index.json.
 */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    st_dtype    dtype;
    size_t      size;
} st_dtypes[] = {
    { "F64", ST_F64, 8 }, { "F32", ST_F32, 4 }, { "F16", ST_F16, 2 },
    { "BF16", ST_BF16, 2 }, { "I64", ST_I64, 8 }, { "I32", ST_I32, 4 },
    { "I16", ST_I16, 2 }, { "I8", ST_I8, 1 }, { "U64", ST_U64, 8 },
    { "U32", ST_U32, 4 }, { "U16", ST_U16, 2 }, { "U8", ST_U8, 1 },
    { "BOOL", ST_BOOL, 1 }, { "F8_E4M3", ST_F8_E4M3, 1 },
    { "F8_E5M2", ST_F8_E5M2, 1 },
};
#define ST_N_DTYPES (sizeof(st_dtypes) / sizeof(st_dtypes[0]))

const char *st_dtype_name(st_dtype t)
{
    for (size_t i = 0; i < ST_N_DTYPES; i++) {
        if (st_dtypes[i].dtype == t) {
            return st_dtypes[i].name;
        }
    }
    return "?";
}

size_t st_dtype_size(st_dtype t)
{
    for (size_t i = 0; i < ST_N_DTYPES; i++) {
        if (st_dtypes[i].dtype == t) {
            return st_dtypes[i].size;
        }
    }
    return 0;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *n, uint64_t *out)
{
    double v;

    if (!cJSON_IsNumber(n)) {
        return -1;
    }
    v = n->valuedouble;
    if (!(v >= 0.0) || v > 9007199254740992.0 || floor(v) != v) {
        return -1;
    }
    *out = (uint64_t) v;
    return 0;
}

static int parse_entry(const cJSON *e, uint64_t data_len, const char *file,
                       st_tensor *t, char *err, size_t errlen)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    const cJSON *d;
    uint64_t begin, end, count = 1, v;
    size_t i, esize = 0;
    int ndim;

    if (!cJSON_IsObject(e)) {
        snprintf(err, errlen, "%s: tensor '%s': header entry is not an object",
                 file, t->name);
        return -1;
    }
    if (!cJSON_IsString(dt)) {
        snprintf(err, errlen, "%s: tensor '%s': missing or non-string dtype",
                 file, t->name);
        return -1;
    }
    for (i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(dt->valuestring, st_dtypes[i].name) == 0) {
            t->dtype = st_dtypes[i].dtype;
            esize = st_dtypes[i].size;
            break;
        }
    }
    if (esize == 0) {
        snprintf(err, errlen, "%s: tensor '%s': unknown dtype '%.32s'",
                 file, t->name, dt->valuestring);
        return -1;
    }
    if (!cJSON_IsArray(shape)) {
        snprintf(err, errlen, "%s: tensor '%s': missing shape array",
                 file, t->name);
        return -1;
    }
    ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor '%s': %d dimensions (at most %d)",
                 file, t->name, ndim, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = 0;
    cJSON_ArrayForEach(d, shape) {
        if (json_uint(d, &v) != 0) {
            snprintf(err, errlen, "%s: tensor '%s': shape holds a value that "
                     "is not a non-negative integer", file, t->name);
            return -1;
        }
        /* count * v must stay representable: the byte count is checked
         * against the file below, so overflow here would be an escape. */
        if (v != 0 && count > UINT64_MAX / v / esize) {
            snprintf(err, errlen, "%s: tensor '%s': shape overflows",
                     file, t->name);
            return -1;
        }
        count *= v;
        t->shape[t->ndim++] = (int64_t) v;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2
        || json_uint(cJSON_GetArrayItem(offs, 0), &begin) != 0
        || json_uint(cJSON_GetArrayItem(offs, 1), &end) != 0) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets must be two "
                 "non-negative integers", file, t->name);
        return -1;
    }
    if (begin > end || end > data_len) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] "
                 "outside the %llu data bytes (truncated file?)", file,
                 t->name, (unsigned long long) begin,
                 (unsigned long long) end, (unsigned long long) data_len);
        return -1;
    }
    if (end - begin != count * esize) {
        snprintf(err, errlen, "%s: tensor '%s': %llu data bytes but shape "
                 "and dtype %s need %llu", file, t->name,
                 (unsigned long long) (end - begin), st_dtypes[i].name,
                 (unsigned long long) (count * esize));
        return -1;
    }
    t->offset = begin;
    t->nbytes = end - begin;
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *) a;
    const st_tensor *y = *(const st_tensor *const *) b;

    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

void st_tensors_free(st_tensor *t, int n)
{
    if (t == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        free(t[i].name);
    }
    free(t);
}

int st_parse_header(const char *json, size_t json_len, uint64_t data_len,
                    const char *file, st_tensor **tensors, int *n_tensors,
                    char *err, size_t errlen)
{
    cJSON *root, *e;
    st_tensor *ts = NULL, **order = NULL;
    int n = 0, cap, rc = -1;

    *tensors = NULL;
    *n_tensors = 0;
    root = cJSON_ParseWithLength(json, json_len);
    if (root == NULL) {
        snprintf(err, errlen, "%s: header is not valid JSON", file);
        return -1;
    }
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object", file);
        goto done;
    }
    cap = cJSON_GetArraySize(root);
    ts = calloc((size_t) cap + 1, sizeof(*ts));
    if (ts == NULL) {
        snprintf(err, errlen, "%s: out of memory", file);
        goto done;
    }
    cJSON_ArrayForEach(e, root) {
        if (e->string == NULL) {
            snprintf(err, errlen, "%s: header entry without a name", file);
            goto done;
        }
        if (strcmp(e->string, "__metadata__") == 0) {
            continue;
        }
        ts[n].name = strdup(e->string);
        if (ts[n].name == NULL) {
            snprintf(err, errlen, "%s: out of memory", file);
            goto done;
        }
        n++;
        if (parse_entry(e, data_len, file, &ts[n - 1], err, errlen) != 0) {
            goto done;
        }
        for (int j = 0; j < n - 1; j++) {
            if (strcmp(ts[j].name, e->string) == 0) {
                snprintf(err, errlen, "%s: tensor '%s' appears twice", file,
                         e->string);
                goto done;
            }
        }
    }
    /* Tensors must not overlap: a crafted header could otherwise alias
     * one tensor's bytes as another's. */
    if (n > 1) {
        order = malloc((size_t) n * sizeof(*order));
        if (order == NULL) {
            snprintf(err, errlen, "%s: out of memory", file);
            goto done;
        }
        for (int j = 0; j < n; j++) {
            order[j] = &ts[j];
        }
        qsort(order, (size_t) n, sizeof(*order), cmp_offset);
        for (int j = 1; j < n; j++) {
            if (order[j]->offset < order[j - 1]->offset + order[j - 1]->nbytes) {
                snprintf(err, errlen, "%s: tensors '%s' and '%s' overlap",
                         file, order[j - 1]->name, order[j]->name);
                goto done;
            }
        }
    }
    *tensors = ts;
    *n_tensors = n;
    ts = NULL;
    rc = 0;
done:
    free(order);
    st_tensors_free(ts, n);
    cJSON_Delete(root);
    return rc;
}

st_file *st_file_open(const char *path, char *err, size_t errlen)
{
    st_file *f;
    struct stat sb;
    uint64_t hlen = 0;
    const unsigned char *p;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (sb.st_size < 8) {
        snprintf(err, errlen, "%s: %lld bytes, too short for a safetensors "
                 "header", path, (long long) sb.st_size);
        close(fd);
        return NULL;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        snprintf(err, errlen, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    f->size = (size_t) sb.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        snprintf(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        st_file_close(f);
        return NULL;
    }
    /* start reading the whole file in the background: the first forward
     * pass touches every weight anyway */
    (void) madvise(f->map, f->size, MADV_WILLNEED);
    p = f->map;
    for (int i = 7; i >= 0; i--) {
        hlen = (hlen << 8) | p[i];
    }
    if (hlen > ST_MAX_HEADER_SIZE || hlen > f->size - 8) {
        snprintf(err, errlen, "%s: header length %llu exceeds the file "
                 "(%zu bytes) or the 100 MB limit", path,
                 (unsigned long long) hlen, f->size);
        st_file_close(f);
        return NULL;
    }
    if (st_parse_header((const char *) p + 8, (size_t) hlen,
                        f->size - 8 - hlen, path, &f->tensors, &f->n_tensors,
                        err, errlen) != 0) {
        st_file_close(f);
        return NULL;
    }
    for (int i = 0; i < f->n_tensors; i++) {
        f->tensors[i].data = p + 8 + hlen + f->tensors[i].offset;
        f->tensors[i].file = f->path;
    }
    return f;
}

void st_file_close(st_file *f)
{
    if (f == NULL) {
        return;
    }
    if (f->map) {
        munmap(f->map, f->size);
    }
    st_tensors_free(f->tensors, f->n_tensors);
    free(f->path);
    free(f);
}

const st_tensor *st_file_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++) {
        if (strcmp(f->tensors[i].name, name) == 0) {
            return &f->tensors[i];
        }
    }
    return NULL;
}

void st_set_close(st_set *s)
{
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < s->n_files; i++) {
        st_file_close(s->files[i]);
    }
    free(s->files);
    free(s);
}

const st_tensor *st_set_find(const st_set *s, const char *name)
{
    for (int i = 0; i < s->n_files; i++) {
        const st_tensor *t = st_file_find(s->files[i], name);
        if (t) {
            return t;
        }
    }
    return NULL;
}

static int set_add(st_set *s, const char *path, char *err, size_t errlen)
{
    st_file **nf, *f;

    for (int i = 0; i < s->n_files; i++) {
        if (strcmp(s->files[i]->path, path) == 0) {
            return 0;
        }
    }
    f = st_file_open(path, err, errlen);
    if (f == NULL) {
        return -1;
    }
    nf = realloc(s->files, (size_t) (s->n_files + 1) * sizeof(*nf));
    if (nf == NULL) {
        st_file_close(f);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->files = nf;
    s->files[s->n_files++] = f;
    return 0;
}

/* A shard name from the index must be a plain file name in the model
 * directory: no path separators, no "..". */
static int shard_name_ok(const char *name)
{
    return name[0] != '\0' && strchr(name, '/') == NULL
           && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int set_open_index(st_set *s, const char *dir, const char *index_path,
                          char *err, size_t errlen)
{
    char *text = NULL, path[4096];
    cJSON *root = NULL, *map, *e;
    FILE *fp;
    long len;
    int rc = -1;

    fp = fopen(index_path, "rb");
    if (fp == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", index_path,
                 strerror(errno));
        return -1;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (len = ftell(fp)) < 0
        || fseek(fp, 0, SEEK_SET) != 0 || len > 256L * 1024 * 1024) {
        snprintf(err, errlen, "%s: cannot read", index_path);
        fclose(fp);
        return -1;
    }
    text = malloc((size_t) len + 1);
    if (text == NULL || fread(text, 1, (size_t) len, fp) != (size_t) len) {
        snprintf(err, errlen, "%s: cannot read", index_path);
        fclose(fp);
        free(text);
        return -1;
    }
    fclose(fp);
    root = cJSON_ParseWithLength(text, (size_t) len);
    map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        snprintf(err, errlen, "%s: not JSON with a \"weight_map\" object",
                 index_path);
        goto done;
    }
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            snprintf(err, errlen, "%s: tensor '%s' maps to an invalid shard "
                     "name", index_path, e->string ? e->string : "?");
            goto done;
        }
        if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir,
                              e->valuestring) >= sizeof(path)) {
            snprintf(err, errlen, "%s: shard path too long", index_path);
            goto done;
        }
        if (set_add(s, path, err, errlen) != 0) {
            size_t l = strlen(err);
            snprintf(err + l, errlen > l ? errlen - l : 0,
                     " (shard named by %s for tensor '%s')", index_path,
                     e->string);
            goto done;
        }
        for (int i = 0; i < s->n_files; i++) {
            if (strcmp(s->files[i]->path, path) == 0
                && st_file_find(s->files[i], e->string) == NULL) {
                snprintf(err, errlen, "%s: tensor '%s' is missing, although "
                         "%s assigns it to this shard", path, e->string,
                         index_path);
                goto done;
            }
        }
    }
    if (s->n_files == 0) {
        snprintf(err, errlen, "%s: weight_map is empty", index_path);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    free(text);
    return rc;
}

st_set *st_set_open(const char *dir, char *err, size_t errlen)
{
    char index_path[4096], single[4096];
    st_set *s;
    int rc;

    if ((size_t) snprintf(index_path, sizeof(index_path),
                          "%s/model.safetensors.index.json", dir)
            >= sizeof(index_path)
        || (size_t) snprintf(single, sizeof(single), "%s/model.safetensors",
                             dir) >= sizeof(single)) {
        snprintf(err, errlen, "%s: path too long", dir);
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (access(index_path, F_OK) == 0) {
        rc = set_open_index(s, dir, index_path, err, errlen);
    } else if (access(single, F_OK) == 0) {
        rc = set_add(s, single, err, errlen);
    } else {
        snprintf(err, errlen, "%s: neither model.safetensors nor "
                 "model.safetensors.index.json found", dir);
        rc = -1;
    }
    if (rc != 0) {
        st_set_close(s);
        return NULL;
    }
    return s;
}
