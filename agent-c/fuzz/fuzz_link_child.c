/* fuzz_link_child - the local link's frame decoder as a child runs it
 * (frames up to a block's size, in pieces whose sizes come from the input),
 * and the decoders of what a gateway sends a child: WELCOME, ACK and the
 * device contract's offer, block and command. */
#include <stddef.h>
#include <stdint.h>

#include "otamq/ota_config.h"
#include "otamq/ota_link.h"
#include "otamq/ota_msg.h"

static uint8_t buf[OTA_CFG_BLOCK_SIZE + OTA_CFG_BLOCK_OVERHEAD];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ota_link_decoder_t d;
    size_t off = 0, step = size > 0u ? (size_t)data[0] % 64u + 1u : 1u;
    ota_link_decoder_init(&d, buf, sizeof(buf));
    while (off < size) {
        size_t used, n = size - off < step ? size - off : step;
        ota_link_frame_t f;
        if (ota_link_decode(&d, data + off, n, &used, &f) == 1) {
            ota_link_welcome_t w;
            ota_offer_t o;
            ota_block_t b;
            ota_command_t c;
            uint8_t v;
            if (f.len + OTA_LINK_OVERHEAD > sizeof(buf))
                __builtin_trap();
            switch (f.code) {
            case OTA_LINK_WELCOME: (void)ota_link_decode_welcome(f.payload, f.len, &w); break;
            case OTA_LINK_ACK: (void)ota_link_decode_u8(f.payload, f.len, &v); break;
            case OTA_LINK_MANIFEST: (void)ota_msg_decode_offer(f.payload, f.len, &o); break;
            case OTA_LINK_BLK: (void)ota_msg_decode_block(f.payload, f.len, &b); break;
            case OTA_LINK_CMD: (void)ota_msg_decode_command(f.payload, f.len, &c); break;
            default: break;
            }
        }
        off += used;
    }
    return 0;
}
