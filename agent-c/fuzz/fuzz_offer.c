/* fuzz_offer - offers and commands into a running agent (fake device):
 * the first input byte picks the topic. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fake_port.h"

static fake_dev_t dev, snapshot;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    int i;
    if (!init) {
        fd_init(&snapshot, "1.0.0");
        fd_boot(&snapshot);
        fd_step(&snapshot); /* connected, subscribed */
        init = 1;
    }
    if (size < 1 || size > 2048)
        return 0;
    memcpy(&dev, &snapshot, sizeof(dev)); /* self-pointers stay valid: same object layout */
    dev.port.ctx = &dev;
    dev.cfg.port = &dev.port;
    dev.cfg.keys = (const uint8_t(*)[65])dev.pubs;
    dev.agent.port = &dev.port;
    dev.agent.cfg = dev.cfg;
    fd_push(&dev, data[0] & 1 ? "cmd" : "ota/manifest", data + 1, size - 1);
    for (i = 0; i < 3; i++)
        fd_step(&dev);
    return 0;
}
