/* persist.h - encoding of the agent's persisted state record (private). */
#ifndef OTAMQ_CORE_PERSIST_H
#define OTAMQ_CORE_PERSIST_H

#include "otamq/ota_agent.h"

/* OTA_OK or OTA_ERR_NOSPACE. */
int ota_persist_encode(const ota_persist_t *ps, uint8_t *buf, size_t cap, size_t *len);
/* OTA_OK or a CBOR/OTA_ERR_MSG status (ps is then zeroed or partial). */
int ota_persist_decode(ota_persist_t *ps, const uint8_t *buf, size_t len);

#endif
