/* The RSA half of the caching_sha2_password / sha256_password bridge (PROTOCOLS.md B3, B4).
 * The only libcrypto user in protocol/: keys, their SPKI PEM, and password decryption. */
#include "mysql.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <string.h>

#define MIN_BITS 2048

static bool usable(EVP_PKEY *key)
{
    return key && EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) >= MIN_BITS;
}

EVP_PKEY *my_rsa_generate(unsigned bits)
{
    if (bits < MIN_BITS)
        return NULL;
    ERR_clear_error();
    return EVP_RSA_gen(bits);
}

EVP_PKEY *my_rsa_from_pem(const char *pem, size_t len)
{
    if (len > INT32_MAX)
        return NULL;
    ERR_clear_error();
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return NULL;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key && !usable(key)) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    return key;
}

void my_rsa_free(EVP_PKEY *key)
{
    EVP_PKEY_free(key);
}

size_t my_rsa_public_pem(EVP_PKEY *key, char *buf, size_t cap)
{
    size_t n = 0;
    char *p = NULL;

    ERR_clear_error();
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return 0;
    /* SPKI ("BEGIN PUBLIC KEY"): what libmysqlclient reads with PEM_read_bio_PUBKEY. */
    if (PEM_write_bio_PUBKEY(bio, key) != 1)
        goto out;
    long got = BIO_get_mem_data(bio, &p);
    if (got <= 0 || (size_t)got >= cap)
        goto out;
    memcpy(buf, p, (size_t)got);
    buf[got] = '\0';
    n = (size_t)got;
out:
    BIO_free(bio);
    return n;
}

size_t my_rsa_size(EVP_PKEY *key)
{
    int n = EVP_PKEY_get_size(key);
    return n > 0 ? (size_t)n : 0;
}

size_t my_rsa_decrypt_password(EVP_PKEY *key, const uint8_t *nonce, size_t nonce_len,
                               const uint8_t *blob, size_t len, uint8_t *out, size_t cap)
{
    size_t n = cap;
    bool ok = false;

    if (!usable(key) || nonce_len == 0 || len != my_rsa_size(key))
        return 0;
    ERR_clear_error();
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    if (!ctx)
        return 0;
    /* RSA_PKCS1_OAEP_PADDING of the client (client_authentication.cc): OAEP with SHA-1 and
     * MGF1-SHA-1, empty label, which are OpenSSL's OAEP defaults; set explicitly anyway. */
    if (EVP_PKEY_decrypt_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) != 1 ||
        EVP_PKEY_decrypt(ctx, out, &n, blob, len) != 1 || n == 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        out[i] ^= nonce[i % nonce_len];
    /* The client encrypted "password\0" XOR nonce; a wrong nonce or key leaves no NUL here. */
    ok = out[n - 1] == 0x00;
out:
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error(); /* a failed decrypt must not leave errors for the next TLS call */
    if (!ok) {
        dbt_wipe(out, cap);
        return 0;
    }
    return n;
}
