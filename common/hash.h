/* SHA-256 helpers and constant-time comparison (OpenSSL underneath). */
#ifndef LLMGATE_COMMON_HASH_H
#define LLMGATE_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN     32
#define SHA256_HEX_LEN 64

/* Writes SHA-256(data) into out[32]. */
void hash_sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);
/* Writes the lowercase hex SHA-256 of data into out[65] (NUL-terminated). */
void hash_sha256_hex(const void *data, size_t len, char out[SHA256_HEX_LEN + 1]);
/* Parses 64 hex chars into out[32]; 0 on success, -1 if not valid hex of that length. */
int hash_hex_decode(const char *hex, uint8_t out[SHA256_LEN]);
/* Constant-time equality of two n-byte buffers; 1 when equal. */
int hash_equal_ct(const void *a, const void *b, size_t n);

#endif
