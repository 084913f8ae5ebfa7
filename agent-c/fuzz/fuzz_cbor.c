/* fuzz_cbor - the CBOR reader on arbitrary bytes; what it accepts must walk
 * again identically and re-encode to the same bytes for its integers. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cbor_util.h"
#include "otamq/ota_cbor.h"

static void walk(ota_cbor_reader_t *r, int depth)
{
    uint8_t major;
    uint64_t arg, i;
    uint8_t h[9];
    const uint8_t *start = r->p;
    if (ota_cbor_read_head(r, &major, &arg) != OTA_OK)
        abort(); /* validated input must walk */
    if (major <= OTA_CBOR_TAG && (ota_cbor_encode_head(h, major, arg) != (size_t)(r->p - start)))
        abort(); /* canonical: re-encoding gives the same head */
    switch (major) {
    case OTA_CBOR_BSTR:
    case OTA_CBOR_TSTR:
        r->p += arg;
        break;
    case OTA_CBOR_MAP:
        arg *= 2u;
        /* fall through */
    case OTA_CBOR_ARRAY:
        for (i = 0; i < arg; i++)
            walk(r, depth + 1);
        break;
    case OTA_CBOR_TAG:
        walk(r, depth + 1);
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ota_cbor_reader_t r;
    if (ota_cbor_validate(data, size) != OTA_OK)
        return 0;
    ota_cbor_reader_init(&r, data, size);
    walk(&r, 0);
    if (r.p != r.end)
        abort();
    return 0;
}
