/* semver.c - SemVer 2.0.0 precedence comparison without allocation.
 *
 * A version is an identifier list of exactly three numeric identifiers,
 * optionally "-" and a prerelease list, optionally "+" and build metadata
 * (checked, then ignored). The core and the prerelease compare by the same
 * rule: identifier by identifier, numeric ones by value (they have no
 * leading zeros, so by length, then digit by digit), below alphanumeric
 * ones, which compare in ASCII order; a list that is a prefix of the other
 * is lower. Numbers are never converted, so they have no size limit. */
#include <string.h>

#include "otamq/ota_msg.h"

typedef struct span {
    const char *p, *end;
} span_t;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

#define ID_NUMERIC 1u /* all digits */
#define ID_BAD 2u     /* a character other than [0-9A-Za-z-] */

/* The next identifier of a list: s->p moves past it and its dot. *n is its
 * length; returns ID_* bits. */
static unsigned next_ident(span_t *s, const char **id, size_t *n)
{
    unsigned kind = ID_NUMERIC;
    *id = s->p;
    for (; s->p < s->end && *s->p != '.'; s->p++) {
        char c = *s->p, l = (char)(c | 0x20);
        if (!is_digit(c))
            kind = (l >= 'a' && l <= 'z') || c == '-' ? kind & ID_BAD : ID_BAD;
    }
    *n = (size_t)(s->p - *id);
    if (s->p < s->end)
        s->p++;
    return kind;
}

/* Number of identifiers in s when it is a valid list: non-empty
 * identifiers of [0-9A-Za-z-] separated by dots, numeric ones without
 * leading zeros when strict (not in build metadata), only numeric ones when
 * numeric. 0 when invalid. */
static unsigned check_list(span_t s, bool strict, bool numeric)
{
    unsigned count = 0, kind;
    const char *id;
    size_t n;
    if (s.p < s.end && s.end[-1] == '.')
        return 0; /* an empty identifier at the end */
    while (s.p < s.end) {
        kind = next_ident(&s, &id, &n);
        if (n == 0u || (kind & ID_BAD) || (numeric && kind != ID_NUMERIC) ||
            (strict && kind == ID_NUMERIC && n > 1u && *id == '0'))
            return 0;
        count++;
    }
    return count;
}

/* Splits and checks a version; pre->p is NULL without a prerelease. */
static bool parse(const char *v, size_t len, span_t *core, span_t *pre)
{
    const char *end = v + len, *plus, *dash;
    if (len > 0u && (*v == 'v' || *v == 'V'))
        v++;
    plus = memchr(v, '+', (size_t)(end - v));
    if (plus == NULL)
        plus = end;
    else if (check_list((span_t){plus + 1, end}, false, false) == 0u)
        return false;
    /* the first '-' ends the core: the core has digits and dots only */
    dash = memchr(v, '-', (size_t)(plus - v));
    core->p = v;
    core->end = dash != NULL ? dash : plus;
    pre->p = NULL;
    if (dash != NULL) {
        pre->p = dash + 1;
        pre->end = plus;
        if (check_list(*pre, true, false) == 0u)
            return false;
    }
    return check_list(*core, true, true) == 3u;
}

static int cmp_list(span_t a, span_t b)
{
    for (;;) {
        const char *ia, *ib;
        size_t na, nb;
        unsigned da, db;
        int c;
        if (a.p == a.end || b.p == b.end)
            return (a.p != a.end) - (b.p != b.end); /* longer list wins */
        da = next_ident(&a, &ia, &na);
        db = next_ident(&b, &ib, &nb);
        if (da != db)
            return da ? -1 : 1; /* numeric < alphanumeric */
        if (da && na != nb)
            return na < nb ? -1 : 1; /* no leading zeros: longer is larger */
        c = memcmp(ia, ib, na < nb ? na : nb);
        if (c != 0)
            return c < 0 ? -1 : 1;
        if (na != nb)
            return na < nb ? -1 : 1;
    }
}

int ota_semver_cmp(const char *a, size_t alen, const char *b, size_t blen, int *cmp)
{
    span_t ca, pa, cb, pb;
    if (a == NULL || b == NULL || cmp == NULL)
        return OTA_ERR_ARG;
    if (!parse(a, alen, &ca, &pa) || !parse(b, blen, &cb, &pb))
        return OTA_ERR_VERSION;
    *cmp = cmp_list(ca, cb);
    if (*cmp == 0 && (pa.p != NULL || pb.p != NULL))
        *cmp = pa.p == NULL || pb.p == NULL ? (pa.p == NULL) - (pb.p == NULL) /* release wins */
                                            : cmp_list(pa, pb);
    return OTA_OK;
}
