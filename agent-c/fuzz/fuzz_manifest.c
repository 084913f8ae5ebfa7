/* fuzz_manifest - manifest payload decoding, target matching, semver. */
#include <stddef.h>
#include <stdint.h>

#include "otamq/ota_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ota_manifest_t m;
    int cmp;
    if (ota_manifest_decode(data, size, &m) != OTA_OK)
        return 0;
    (void)ota_manifest_has_target(&m, "esp32-v2");
    (void)ota_semver_cmp(m.version, m.version_len, "1.2.3", 5, &cmp);
    if (m.min_bootloader != NULL)
        (void)ota_semver_cmp("2.1.0", 5, m.min_bootloader, m.min_bootloader_len, &cmp);
    return 0;
}
