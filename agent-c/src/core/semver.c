/* semver.c - SemVer 2.0.0 precedence comparison without allocation.
 *
 * A version is read as one sequence of identifiers, each in a part: three
 * numeric identifiers of the core, optionally "-" and the prerelease,
 * optionally "+" and build metadata (checked, then ignored). The core and
 * the prerelease compare by the same rule: identifier by identifier,
 * numeric ones by value (they have no leading zeros, so by length, then
 * digit by digit), below alphanumeric ones, which compare in ASCII order; a
 * list that is a prefix of the other is lower. Numbers are never converted,
 * so they have no size limit. */
#include <string.h>

#include "otamq/ota_msg.h"

enum { CORE, PRE, BUILD, END }; /* the parts of a version, in order */

typedef struct ver {
    const char *p, *end;
    unsigned part;  /* of the identifier at p; END: none left */
    const char *id; /* the identifier read last, of n bytes */
    size_t n;
} ver_t;

#define ID_NUMERIC 1u /* all digits */
#define ID_BAD 2u     /* a character other than [0-9A-Za-z-] */

/* Reads the identifier at v->p into v->id and v->n, and moves past it and
 * the separator after it ('.' stays in the part, '-' ends the core, '+' the
 * core or the prerelease), into the part that follows. Returns ID_* bits. */
static unsigned next_ident(ver_t *v)
{
    unsigned kind = ID_NUMERIC, part = END;
    v->id = v->p;
    for (; v->p < v->end; v->p++) {
        unsigned c = (unsigned char)*v->p;
        if (c == '.' || (c == '-' && v->part == CORE) || (c == '+' && v->part != BUILD)) {
            part = c == '.' ? v->part : c == '-' ? PRE : BUILD;
            break;
        }
        if (c - '0' > 9u)
            kind = (c | 0x20u) - 'a' <= 'z' - 'a' || c == '-' ? kind & ID_BAD : ID_BAD;
    }
    v->n = (size_t)(v->p - v->id);
    if (v->p < v->end)
        v->p++;
    v->part = part;
    return kind;
}

/* Starts reading the version s[0..len) (a leading 'v' or 'V' is allowed)
 * and checks all of it: non-empty identifiers of [0-9A-Za-z-], numeric
 * ones without leading zeros (but in build metadata), exactly three in the
 * core, all numeric. */
static bool start(ver_t *v, const char *s, size_t len)
{
    unsigned kind, part, core = 0;
    v->end = s + len;
    if (len > 0u && (*s | 0x20) == 'v')
        s++;
    for (v->p = s, v->part = CORE; v->part != END; core += part == CORE) {
        part = v->part;
        kind = next_ident(v);
        if (v->n == 0u || (kind & ID_BAD) || (part == CORE && kind == 0u) ||
            (part != BUILD && kind == ID_NUMERIC && v->n > 1u && *v->id == '0'))
            return false;
    }
    v->p = s; /* checked: read it again from the start */
    v->part = CORE;
    return core == 3u;
}

int ota_semver_cmp(const char *a, size_t alen, const char *b, size_t blen, int *cmp)
{
    ver_t va, vb;
    size_t na, nb;
    unsigned i, da, db;
    int c;
    if (a == NULL || b == NULL || cmp == NULL)
        return OTA_ERR_ARG;
    if (!start(&va, a, alen) || !start(&vb, b, blen))
        return OTA_ERR_VERSION;
    for (i = 0;; i++) {
        if (va.part >= BUILD || vb.part >= BUILD) {
            /* one has no identifier left: the longer list wins, but for
             * the first after the core: a release is above its
             * prereleases */
            c = (va.part < BUILD) - (vb.part < BUILD);
            if (i == 3u)
                c = -c;
            break;
        }
        da = next_ident(&va);
        db = next_ident(&vb);
        na = va.n;
        nb = vb.n;
        if (da != db) {
            c = (int)db - (int)da; /* numeric < alphanumeric */
            break;
        }
        c = da != 0u && na != nb ? 0 : memcmp(va.id, vb.id, na < nb ? na : nb);
        if (c == 0)
            c = (na > nb) - (na < nb); /* numbers: the longer is larger */
        if (c != 0)
            break;
    }
    *cmp = (c > 0) - (c < 0);
    return OTA_OK;
}
