/* SHA-256 and constant-time comparison for API keys and cache keys. */
#include "common/hash.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>

/* OpenSSL 3's one-shot SHA256() looks the algorithm up in the provider tables
 * on every call (a lock and a hash lookup, as much as the digest of a short
 * key); fetch it once per process instead. The fetched method is immutable and
 * may be shared by threads. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void hash_sha256(const void *data, size_t len, uint8_t out[SHA256_LEN])
{
    pthread_once(&sha256_once, sha256_fetch);
    if (!sha256_md || !EVP_Digest(data, len, out, NULL, sha256_md, NULL))
        SHA256(data, len, out); /* the slow path still answers */
}

void hash_sha256_hex(const void *data, size_t len, char out[SHA256_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[SHA256_LEN];
    hash_sha256(data, len, d);
    for (int i = 0; i < SHA256_LEN; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[SHA256_HEX_LEN] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hash_hex_decode(const char *hex, uint8_t out[SHA256_LEN])
{
    for (int i = 0; i < SHA256_LEN; i++) {
        int hi = hexval(hex[2 * i]);
        int lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[SHA256_HEX_LEN] == '\0' ? 0 : -1;
}

int hash_equal_ct(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}
