/*
 * ota_link.h - the local link: the device's messages framed over a byte
 * stream (serial, RS-485, a BLE or Thread byte pipe, a UNIX socket), between
 * a child node and its gateway (docs/PROTOCOL.md, "Local links").
 *
 * A frame is
 *
 *   0xA5 0x4C | code | id (2, big endian) | length (2, big endian) | hcheck |
 *   payload (length bytes) | CRC-32 (4, big endian)
 *
 * code says which of the device's topics the payload belongs to (or is a
 * link control frame: HELLO, WELCOME, SUB, ACK); id is 0 for frames that
 * need no acknowledgement and 1..65535 otherwise (the ACK names it); hcheck
 * is the low byte of the CRC-32 of the five bytes code..length, so that a
 * corrupted length is caught after 8 bytes instead of swallowing the frames
 * behind it; the trailing CRC-32 (IEEE 802.3, the one of zlib and of the
 * ESP32's ROM, esp_rom_crc32_le) covers code..payload. The payload of a
 * topic frame is exactly the device contract's CBOR message.
 *
 * Encoding writes into a caller buffer; decoding is incremental (bytes in
 * pieces of any size), bounded by the buffer the caller gives the decoder
 * (the largest frame it takes), never allocates and never reads outside the
 * bytes it was given. After garbage or a corrupted frame it finds the next
 * frame by scanning for the marker and checking the header and the CRC.
 */
#ifndef OTAMQ_OTA_LINK_H
#define OTAMQ_OTA_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OTA_LINK_MARK0 0xA5u
#define OTA_LINK_MARK1 0x4Cu
#define OTA_LINK_HEADER 8u  /* marker, code, id, length, hcheck */
#define OTA_LINK_TRAILER 4u /* CRC-32 */
#define OTA_LINK_OVERHEAD (OTA_LINK_HEADER + OTA_LINK_TRAILER)
/* Smallest maximum frame size a side may announce: every control frame and
 * every device message but a block fits in it. */
#define OTA_LINK_MIN_FRAME 512u
/* Largest frame the format can carry (16-bit length). */
#define OTA_LINK_MAX_FRAME (OTA_LINK_OVERHEAD + 0xffffu)
/* Version of the link protocol, HELLO key 3. */
#define OTA_LINK_VERSION 1u

/* Frame codes. Child -> gateway: 0x01..0x3f; gateway -> child: 0x81..0xbf;
 * ACK goes both ways. */
typedef enum ota_link_code {
    OTA_LINK_HELLO = 0x01,    /* first frame of the child: its ID, its max frame */
    OTA_LINK_BIRTH = 0x02,    /* dm/{child}/birth (id != 0: acknowledged) */
    OTA_LINK_HB = 0x03,       /* dm/{child}/hb */
    OTA_LINK_EV = 0x04,       /* dm/{child}/ev (id != 0: acknowledged) */
    OTA_LINK_GET = 0x05,      /* dm/{child}/ota/get */
    OTA_LINK_SUB = 0x06,      /* subscribe (again) to one of the child's topics */
    OTA_LINK_ACK = 0x07,      /* both ways: the frame id was received (and
                                 what became of it) */
    OTA_LINK_WELCOME = 0x81,  /* answer to HELLO */
    OTA_LINK_MANIFEST = 0x82, /* dm/{child}/ota/manifest (id != 0) */
    OTA_LINK_BLK = 0x83,      /* dm/{child}/ota/blk */
    OTA_LINK_CMD = 0x84       /* dm/{child}/cmd (id != 0) */
} ota_link_code_t;

/* WELCOME key 1. */
typedef enum ota_link_status {
    OTA_LINK_OK = 0,         /* relaying for the child */
    OTA_LINK_REFUSED = 1,    /* the broker does not let this gateway act for
                                the child (not its registered child, revoked,
                                moved to another gateway) */
    OTA_LINK_BUSY = 2,       /* the gateway serves as many children as it can */
    OTA_LINK_BAD_HELLO = 3,  /* malformed HELLO, unknown version, max frame
                                below OTA_LINK_MIN_FRAME */
    OTA_LINK_UNREACHABLE = 4 /* the gateway cannot ask the broker about a child
                                it has never relayed for; try again later */
} ota_link_status_t;

/* The topic code of a device topic suffix ("birth", "hb", "ev", "ota/get",
 * "ota/manifest", "ota/blk", "cmd"), 0 when it is none of them. */
uint8_t ota_link_code_of(const char *suffix);

/* The topic suffix of a topic code, NULL for a control code. */
const char *ota_link_suffix_of(uint8_t code);

/* CRC-32 (IEEE 802.3, reflected, init and final xor 0xffffffff) of
 * data[0..len), continuing crc (0 to start): crc32(crc32(0, a), b) is the
 * CRC of a followed by b. */
uint32_t ota_link_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* Completes a frame whose payload_len bytes of payload the caller has
 * already written at frame + OTA_LINK_HEADER (so large payloads such as
 * blocks are encoded in place): writes the header and the CRC and sets
 * *frame_len. OTA_OK, OTA_ERR_ARG (payload longer than 65535 bytes),
 * OTA_ERR_NOSPACE (the frame does not fit in cap). */
int ota_link_seal(uint8_t *frame, size_t cap, uint8_t code, uint16_t id, size_t payload_len,
                  size_t *frame_len);

/* Writes a frame of payload[0..len) into out (capacity cap); payload may
 * overlap out. OTA_OK, OTA_ERR_ARG, OTA_ERR_NOSPACE. */
int ota_link_encode(uint8_t *out, size_t cap, uint8_t code, uint16_t id, const uint8_t *payload,
                    size_t len, size_t *frame_len);

/* A decoded frame; payload points into the decoder's buffer and is valid
 * until the next ota_link_decode call. */
typedef struct ota_link_frame {
    uint8_t code;
    uint16_t id;
    const uint8_t *payload;
    size_t len;
} ota_link_frame_t;

/* Incremental decoder. buf[0..n) holds the bytes of a frame candidate that
 * starts with the marker. The counters are for diagnostics. */
typedef struct ota_link_decoder {
    uint8_t *buf;
    size_t cap;         /* the largest frame taken, OTA_LINK_OVERHEAD.. */
    size_t n;
    size_t done;        /* length of the frame last returned */
    uint32_t frames;    /* frames returned */
    uint32_t garbage;   /* bytes skipped outside any frame */
    uint32_t bad_header;/* candidates refused at the header (hcheck, or
                           longer than cap) */
    uint32_t bad_crc;   /* candidates refused by the CRC */
} ota_link_decoder_t;

/* Prepares d to decode frames of up to cap bytes into buf (owned by the
 * caller, as long as d is used). OTA_OK, or OTA_ERR_ARG when cap is below
 * OTA_LINK_OVERHEAD or above OTA_LINK_MAX_FRAME. */
int ota_link_decoder_init(ota_link_decoder_t *d, uint8_t *buf, size_t cap);

/* Takes bytes from data[0..len) and sets *used to how many it took (all of
 * them unless it returns 1). Returns 1 with *f set when a frame is
 * complete: call again with the rest (data + *used) even when it is empty,
 * since the bytes already buffered may hold more frames. Returns 0 when all
 * len bytes are used and no frame is complete yet. A candidate whose
 * header check, length or CRC is wrong is dropped one byte at a time: the
 * search for the marker starts again right after its first byte, over the
 * bytes already buffered, so a frame hidden behind a dropped or corrupted
 * byte is still found. */
int ota_link_decode(ota_link_decoder_t *d, const uint8_t *data, size_t len, size_t *used,
                    ota_link_frame_t *f);

/* ---- link control messages (CBOR maps, the device contract's rules) ---- */

/* HELLO: 1 device ID (tstr, ^[A-Za-z0-9._-]{1,64}$) · 2 max frame (uint,
 * the largest frame the child takes, >= OTA_LINK_MIN_FRAME) · 3 link
 * version (uint, OTA_LINK_VERSION). */
typedef struct ota_link_hello {
    const char *device_id;
    size_t device_id_len;
    uint32_t max_frame;
    uint32_t version;
} ota_link_hello_t;

/* WELCOME: 1 status (ota_link_status_t) · 2 max frame (uint, the largest
 * frame the gateway takes) · 3 message (tstr, optional, <= 128 bytes). */
typedef struct ota_link_welcome {
    uint8_t status;
    uint32_t max_frame;
    const char *message; /* NULL: none */
    size_t message_len;
} ota_link_welcome_t;

/* Encoders: OTA_OK, OTA_ERR_ARG, OTA_ERR_NOSPACE. Decoders: OTA_OK,
 * OTA_ERR_MSG or a CBOR status; strings point into buf. Unknown keys are
 * skipped. */
int ota_link_encode_hello(const ota_link_hello_t *m, uint8_t *buf, size_t cap, size_t *len);
int ota_link_decode_hello(const uint8_t *buf, size_t len, ota_link_hello_t *out);
int ota_link_encode_welcome(const ota_link_welcome_t *m, uint8_t *buf, size_t cap, size_t *len);
int ota_link_decode_welcome(const uint8_t *buf, size_t len, ota_link_welcome_t *out);

/* ACK: 1 reason (uint: the broker's PUBACK reason code for a relayed
 * BIRTH or EV, 0 for a MANIFEST or CMD received). SUB: 1 topic code
 * (uint: OTA_LINK_MANIFEST, OTA_LINK_BLK or OTA_LINK_CMD). Both are maps
 * with the one uint under key 1. */
int ota_link_encode_u8(uint8_t value, uint8_t *buf, size_t cap, size_t *len);
int ota_link_decode_u8(const uint8_t *buf, size_t len, uint8_t *value);

#ifdef __cplusplus
}
#endif
#endif /* OTAMQ_OTA_LINK_H */
