/* persist.c - the agent's persisted state record, encoded as a CBOR map so
 * that later agent versions can add keys and still read old records. */
#include "persist.h"

#define F(k, t, m) OTA_ROW(k, t, ota_persist_t, m)
#define A(k, t, m, l) OTA_ROW2(k, t, ota_persist_t, m, l)

/* one row per key, 1..PK_MAX (persist.h declares the count) */
const ota_field_t ota_persist_rows[] = {
    A(PK_STATE, OTA_F_U32, state, OTA_STATE_FAILED),
    A(PK_ROLLOUT, OTA_F_TEXT, rollout, OTA_CFG_ROLLOUT_MAX + 1u),
    A(PK_VERSION, OTA_F_TEXT, version, OTA_CFG_VERSION_MAX + 1u),
    F(PK_DIGEST, OTA_F_DIGEST, digest),
    F(PK_SIZE, OTA_F_U32, size),
    F(PK_OFFSET, OTA_F_U32, offset),
    F(PK_BLOCK, OTA_F_U32, block_size),
    A(PK_MODE, OTA_F_U8, install_mode, 1),
    F(PK_SEQ, OTA_F_U64, seq),
    F(PK_SV, OTA_F_U32, secure_version),
    F(PK_TSV, OTA_F_U32, target_secure_version),
    A(PK_SLOT, OTA_F_U8, target_slot, 1),
    F(PK_ERROR, OTA_F_U8, error),
    F(PK_FLAGS, OTA_F_U32, flags),
    F(PK_BOOTS, OTA_F_U32, boots_since_commit),
    F(PK_WDT, OTA_F_U32, wdt_since_commit),
    F(PK_TRIAL, OTA_F_U32, trial_ms),
    A(PK_BOOTLOG, OTA_F_LOG, boot_log, offsetof(ota_persist_t, nboots)),
    A(PK_WDTLOG, OTA_F_LOG, wdt_log, offsetof(ota_persist_t, nwdt)),
    A(PK_KIND, OTA_F_U32, kind, OTA_KINDS - 1),
    F(PK_REFETCH, OTA_F_U8, refetches),
    F(PK_GUARD0, OTA_F_U64, guard[0]),
    F(PK_GUARD1, OTA_F_U64, guard[1]),
    F(PK_GUARD2, OTA_F_U64, guard[2]),
    A(PK_KVER1, OTA_F_TEXT, kind_version[0], OTA_CFG_VERSION_MAX + 1u),
    A(PK_KVER2, OTA_F_TEXT, kind_version[1], OTA_CFG_VERSION_MAX + 1u),
    F(PK_WINDOW, OTA_F_U8, window),
};
