/* Tests for the safetensors reader: valid files and shards open; every kind of malformed file is
 * rejected with a message that names the tensor at fault. Files are generated in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];

/* Writes an 8-byte little-endian header length (hlen, or strlen(header) when hlen < 0), the
 * header and data_len bytes of a counting pattern. */
static void write_file(const char *name, const char *header, long long hlen, size_t data_len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    uint64_t n = hlen < 0 ? strlen(header) : (uint64_t)hlen;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(n >> (8 * i));
    assert_int_equal(fwrite(len, 1, 8, fp), 8);
    size_t hl = strlen(header);
    if (hl) assert_int_equal(fwrite(header, 1, hl, fp), hl);
    for (size_t i = 0; i < data_len; i++)
        fputc((int)(i & 0xff), fp);
    assert_int_equal(fclose(fp), 0);
}

static int open_named(const char *name, struct st_file **f, char *err, size_t errlen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    return st_file_open(path, f, err, errlen);
}

/* Expects opening name to fail with a message containing want. */
static void expect_reject(const char *name, const char *want)
{
    struct st_file *f = (struct st_file *)1;
    char err[512] = "";
    assert_int_equal(open_named(name, &f, err, sizeof err), -1);
    assert_null(f);
    if (!strstr(err, want)) fail_msg("error '%s' does not mention '%s'", err, want);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/test_safetensors.XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *VALID = "{\"__metadata__\":{\"format\":\"pt\"},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                           "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                           "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[32,34]}}  ";

static void test_valid(void **state)
{
    (void)state;
    write_file("ok.safetensors", VALID, -1, 34);
    struct st_file *f = NULL;
    char err[256] = "";
    assert_int_equal(open_named("ok.safetensors", &f, err, sizeof err), 0);
    assert_int_equal(f->n, 3);
    const struct st_tensor *a = st_file_find(f, "a"), *b = st_file_find(f, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_null(st_file_find(f, "__metadata__"));
    assert_int_equal(a->dtype, ST_F32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[1], 3);
    assert_int_equal(a->nbytes, 24);
    assert_int_equal(b->dtype, ST_BF16);
    assert_int_equal(((const unsigned char *)b->data)[0], 24);
    assert_int_equal(st_file_find(f, "c")->ndim, 0);
    st_file_close(f);
}

static void test_truncated_header(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/short.safetensors", g_dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite("\x10\x00\x00", 1, 3, fp), 3);
    assert_int_equal(fclose(fp), 0);
    expect_reject("short.safetensors", "too short");
    /* the length says 200 bytes of header but the file ends before */
    write_file("cut.safetensors", "{\"a\":{\"dtype\":\"F32\"", 200, 0);
    expect_reject("cut.safetensors", "exceeds the file");
}

static void test_header_too_big(void **state)
{
    (void)state;
    write_file("huge.safetensors", "{}", 1LL << 40, 0);
    expect_reject("huge.safetensors", "header length");
}

static void test_bad_json(void **state)
{
    (void)state;
    write_file("json.safetensors", "{\"a\":{\"dtype\":\"F32\",}}", -1, 0);
    expect_reject("json.safetensors", "not valid JSON");
    write_file("arr.safetensors", "[1,2]", -1, 0);
    expect_reject("arr.safetensors", "not an object");
    write_file("notobj.safetensors", "{\"w\":3}", -1, 0);
    expect_reject("notobj.safetensors", "tensor 'w'");
}

static void test_offsets_out_of_range(void **state)
{
    (void)state;
    write_file("range.safetensors",
               "{\"w1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"w2\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
               -1, 20);
    expect_reject("range.safetensors", "tensor 'w2'");
    expect_reject("range.safetensors", "outside the data region");
    write_file("rev.safetensors",
               "{\"w3\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", -1, 8);
    expect_reject("rev.safetensors", "tensor 'w3'");
    write_file("neg.safetensors",
               "{\"w4\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", -1, 8);
    expect_reject("neg.safetensors", "tensor 'w4'");
}

static void test_overlap(void **state)
{
    (void)state;
    write_file("overlap.safetensors",
               "{\"first\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"second\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[12,20]}}",
               -1, 20);
    expect_reject("overlap.safetensors", "tensor 'second' overlaps tensor 'first'");
}

static void test_shape_mismatch(void **state)
{
    (void)state;
    write_file("shape.safetensors",
               "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[3,3],"
               "\"data_offsets\":[0,16]}}",
               -1, 16);
    expect_reject("shape.safetensors", "tensor 'model.norm.weight'");
    expect_reject("shape.safetensors", "need 18 bytes");
    write_file("shape2.safetensors",
               "{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", -1, 8);
    expect_reject("shape2.safetensors", "tensor 'x'");
    write_file("shape3.safetensors",
               "{\"y\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}",
               -1, 8);
    expect_reject("shape3.safetensors", "tensor 'y'");
}

static void test_unknown_dtype(void **state)
{
    (void)state;
    write_file("dtype.safetensors",
               "{\"ok\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[4,12]}}",
               -1, 12);
    expect_reject("dtype.safetensors", "tensor 'ids': unsupported dtype 'I64'");
    write_file("nodtype.safetensors", "{\"z\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4);
    expect_reject("nodtype.safetensors", "tensor 'z': missing dtype");
}

static void test_duplicate(void **state)
{
    (void)state;
    write_file("dup.safetensors",
               "{\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               -1, 8);
    expect_reject("dup.safetensors", "tensor 'd' appears twice");
}

static void test_memory(void **state)
{
    (void)state;
    char buf[128];
    const char *h = "{\"m\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t hl = strlen(h);
    memset(buf, 0, sizeof buf);
    buf[0] = (char)hl;
    memcpy(buf + 8, h, hl);
    struct st_file *f = NULL;
    char err[256];
    assert_int_equal(st_file_open_mem(buf, 8 + hl + 4, "mem", &f, err, sizeof err), 0);
    assert_ptr_equal(st_file_find(f, "m")->data, buf + 8 + hl);
    st_file_close(f);
    /* every truncation of a valid file is rejected, never read past */
    for (size_t cut = 0; cut < 8 + hl + 4; cut++) {
        assert_int_equal(st_file_open_mem(buf, cut, "mem", &f, err, sizeof err), -1);
        assert_null(f);
    }
}

/* Random single-byte corruptions of a valid file: each is accepted or rejected, never a crash
 * (run under the sanitizer build to make that bite). */
static void test_mutations(void **state)
{
    (void)state;
    size_t hl = strlen(VALID), len = 8 + hl + 34;
    unsigned char *good = calloc(1, len), *buf = malloc(len);
    assert_non_null(good);
    assert_non_null(buf);
    good[0] = (unsigned char)hl;
    memcpy(good + 8, VALID, hl);
    uint32_t rng = 12345;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, good, len);
        int flips = 1 + iter % 3;
        for (int f = 0; f < flips; f++) {
            rng = rng * 1103515245u + 12345u;
            size_t at = (rng >> 8) % (8 + hl);
            rng = rng * 1103515245u + 12345u;
            buf[at] = (unsigned char)(rng >> 16);
        }
        struct st_file *f = NULL;
        char err[256];
        if (st_file_open_mem(buf, len, "fuzz", &f, err, sizeof err) == 0) {
            for (size_t i = 0; i < f->n; i++) /* every accepted tensor lies inside the buffer */
                assert_true((const unsigned char *)f->tensors[i].data + f->tensors[i].nbytes <=
                            buf + len);
            st_file_close(f);
        } else {
            assert_null(f);
            assert_true(err[0] != '\0');
        }
    }
    free(good);
    free(buf);
}

static void write_text(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static void test_shards(void **state)
{
    (void)state;
    write_file("s1.safetensors",
               "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4);
    write_file("s2.safetensors",
               "{\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8);
    write_text("model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"t1\":\"s1.safetensors\","
               "\"t2\":\"s2.safetensors\"}}");
    struct st_set *s = NULL;
    char err[512] = "";
    assert_int_equal(st_set_open_dir(g_dir, &s, err, sizeof err), 0);
    assert_int_equal(s->n_files, 2);
    assert_non_null(st_set_find(s, "t1"));
    assert_int_equal(st_set_find(s, "t2")->shape[0], 2);
    assert_null(st_set_find(s, "t3"));
    st_set_close(s);

    write_text("model.safetensors.index.json",
               "{\"weight_map\":{\"t1\":\"s1.safetensors\",\"t2\":\"s1.safetensors\"}}");
    assert_int_equal(st_set_open_dir(g_dir, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 't2'"));
    write_text("model.safetensors.index.json", "{\"weight_map\":{\"t1\":\"../s1.safetensors\"}}");
    assert_int_equal(st_set_open_dir(g_dir, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 't1'"));
    write_text("model.safetensors.index.json", "{\"weight_map\":{\"t1\":\"missing.safetensors\"}}");
    assert_int_equal(st_set_open_dir(g_dir, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.safetensors"));
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", g_dir);
    assert_int_equal(unlink(path), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_truncated_header),
        cmocka_unit_test(test_header_too_big),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_offsets_out_of_range),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_shape_mismatch),
        cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
