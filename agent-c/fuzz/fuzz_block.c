/* fuzz_block - block messages into an agent that is downloading (fake
 * device with a signed offer accepted), and the block decoder. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fake_port.h"

static fake_dev_t dev, snapshot;
static uint8_t img[4096];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    ota_block_t b;
    if (!init) {
        fd_init(&snapshot, "1.0.0");
        snapshot.drop_all = 1; /* the fuzzer plays the broker */
        tk_image(img, sizeof(img), OTA_SIM_HEALTHY, 0, "1.1.0", 9);
        fd_boot(&snapshot);
        fd_offer_image(&snapshot, img, sizeof(img), "1.1.0", "r-f", 0, 1, 0);
        fd_step(&snapshot);
        fd_step(&snapshot);
        init = 1;
    }
    (void)ota_msg_decode_block(data, size, &b);
    if (size > OTA_CFG_BLOCK_SIZE + 256)
        return 0;
    memcpy(&dev, &snapshot, sizeof(dev));
    dev.port.ctx = &dev;
    dev.cfg.port = &dev.port;
    dev.cfg.keys = (const uint8_t(*)[65])dev.pubs;
    dev.agent.port = &dev.port;
    dev.agent.cfg = dev.cfg;
    dev.image = img;
    fd_push(&dev, "ota/blk", data, size);
    fd_step(&dev);
    return 0;
}
