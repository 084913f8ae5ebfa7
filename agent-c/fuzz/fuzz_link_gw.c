/* fuzz_link_gw - the local link's frame decoder as a gateway runs it for
 * each child (frames up to 1024 bytes, in pieces whose sizes come from the
 * input), and the decoders of what a child sends: HELLO, SUB, ACK and the
 * block request the gateway answers from its cache, plus the offer parse
 * the gateway does on what it relays down. */
#include <stddef.h>
#include <stdint.h>

#include "gw_msg.h"
#include "otamq/ota_link.h"

static uint8_t buf[1024];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ota_link_decoder_t d;
    size_t off = 0, step = size > 0u ? (size_t)data[0] % 64u + 1u : 1u;
    ota_link_decoder_init(&d, buf, sizeof(buf));
    while (off < size) {
        size_t used, n = size - off < step ? size - off : step;
        ota_link_frame_t f;
        if (ota_link_decode(&d, data + off, n, &used, &f) == 1) {
            ota_link_hello_t h;
            ota_block_request_t r;
            uint8_t v, digest[32];
            uint32_t isz;
            if (f.len + OTA_LINK_OVERHEAD > sizeof(buf))
                __builtin_trap();
            switch (f.code) {
            case OTA_LINK_HELLO: (void)ota_link_decode_hello(f.payload, f.len, &h); break;
            case OTA_LINK_SUB:
            case OTA_LINK_ACK: (void)ota_link_decode_u8(f.payload, f.len, &v); break;
            case OTA_LINK_GET: (void)gw_decode_block_request(f.payload, f.len, &r); break;
            default: (void)gw_offer_image(f.payload, f.len, digest, &isz); break;
            }
        }
        off += used;
    }
    return 0;
}
