/* cbor_util.c - see cbor_util.h. */
#include "cbor_util.h"

#include <string.h>

int ota_cbor_validate(const uint8_t *buf, size_t len)
{
    ota_cbor_reader_t r;
    int rc;
    if (buf == NULL && len != 0u)
        return OTA_ERR_ARG;
    ota_cbor_reader_init(&r, buf, len);
    rc = ota_cbor_skip(&r);
    if (rc == OTA_OK && r.p != r.end)
        rc = OTA_ERR_CBOR;
    return rc;
}

int ota_cbor_read_int(ota_cbor_reader_t *r, int64_t *v)
{
    uint8_t major;
    uint64_t arg;
    int rc = ota_cbor_read_head(r, &major, &arg);
    if (rc != OTA_OK)
        return rc;
    if (major > OTA_CBOR_NINT || arg > (uint64_t)INT64_MAX)
        return OTA_ERR_CBOR_TYPE;
    *v = major == OTA_CBOR_UINT ? (int64_t)arg : -1 - (int64_t)arg;
    return OTA_OK;
}

int ota_cbor_read_tstr(ota_cbor_reader_t *r, const char **p, size_t *n)
{
    const uint8_t *s;
    int rc = ota_cbor_read_str(r, OTA_CBOR_TSTR, &s, n);
    if (rc == OTA_OK)
        *p = (const char *)s;
    return rc;
}

void ota_cbor_put_int(ota_cbor_writer_t *w, int64_t v)
{
    if (v >= 0)
        ota_cbor_put_head(w, OTA_CBOR_UINT, (uint64_t)v);
    else
        ota_cbor_put_head(w, OTA_CBOR_NINT, (uint64_t)(-1 - v));
}

void ota_cbor_put_cstr(ota_cbor_writer_t *w, const char *s)
{
    ota_cbor_put_tstr(w, s, strlen(s));
}

int ota_cbor_writer_status(const ota_cbor_writer_t *w)
{
    return w->overflow ? OTA_ERR_NOSPACE : OTA_OK;
}
