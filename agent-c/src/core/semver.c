/* semver.c - SemVer 2.0.0 precedence comparison without allocation. */
#include "otamq/ota_msg.h"

typedef struct sv {
    uint64_t num[3];
    const char *pre; /* prerelease, NULL if none */
    size_t pre_len;
} sv_t;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ident(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* Numeric identifier: digits, no leading zero, at most 19 digits. */
static bool parse_num(const char **p, const char *end, uint64_t *v)
{
    const char *s = *p;
    size_t n = 0;
    *v = 0;
    while (s + n < end && is_digit(s[n])) {
        if (n == 19u)
            return false;
        *v = *v * 10u + (uint64_t)(s[n] - '0');
        n++;
    }
    if (n == 0u || (n > 1u && s[0] == '0'))
        return false;
    *p = s + n;
    return true;
}

/* Dot-separated non-empty identifiers of [0-9A-Za-z-]; numeric ones may not
 * have leading zeros when check_num. Returns the end of the list. */
static const char *parse_idents(const char *s, const char *end, bool check_num)
{
    for (;;) {
        const char *start = s;
        bool numeric = true;
        while (s < end && is_ident(*s)) {
            if (!is_digit(*s))
                numeric = false;
            s++;
        }
        if (s == start)
            return NULL;
        if (check_num && numeric && s - start > 1 && *start == '0')
            return NULL;
        if (s == end || *s != '.')
            return s;
        s++;
    }
}

static bool parse(const char *s, size_t len, sv_t *v)
{
    const char *end = s + len;
    int i;
    if (len > 0u && (*s == 'v' || *s == 'V'))
        s++;
    for (i = 0; i < 3; i++) {
        if (i > 0) {
            if (s == end || *s != '.')
                return false;
            s++;
        }
        if (!parse_num(&s, end, &v->num[i]))
            return false;
    }
    v->pre = NULL;
    v->pre_len = 0;
    if (s < end && *s == '-') {
        const char *e = parse_idents(s + 1, end, true);
        if (e == NULL)
            return false;
        v->pre = s + 1;
        v->pre_len = (size_t)(e - v->pre);
        s = e;
    }
    if (s < end && *s == '+') {
        s = parse_idents(s + 1, end, false);
        if (s == NULL)
            return false;
    }
    return s == end;
}

/* Next identifier of a prerelease list. */
static void next_ident(const char **p, const char *end, const char **id, size_t *n)
{
    const char *s = *p;
    *id = s;
    while (s < end && *s != '.')
        s++;
    *n = (size_t)(s - *id);
    *p = s < end ? s + 1 : s;
}

static bool all_digits(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return true;
}

static int cmp_pre(const sv_t *a, const sv_t *b)
{
    const char *pa = a->pre, *pb = b->pre, *ea, *eb;
    if (a->pre == NULL || b->pre == NULL)
        return (a->pre == NULL) - (b->pre == NULL); /* release > prerelease */
    ea = a->pre + a->pre_len;
    eb = b->pre + b->pre_len;
    for (;;) {
        const char *ia, *ib;
        size_t na, nb, i;
        bool da, db;
        if (pa == ea || pb == eb)
            return (pa != ea) - (pb != eb); /* longer list wins */
        next_ident(&pa, ea, &ia, &na);
        next_ident(&pb, eb, &ib, &nb);
        da = all_digits(ia, na);
        db = all_digits(ib, nb);
        if (da != db)
            return da ? -1 : 1; /* numeric < alphanumeric */
        if (da && na != nb)
            return na < nb ? -1 : 1; /* no leading zeros: longer is larger */
        for (i = 0; i < na && i < nb; i++)
            if (ia[i] != ib[i])
                return (unsigned char)ia[i] < (unsigned char)ib[i] ? -1 : 1;
        if (na != nb)
            return na < nb ? -1 : 1;
    }
}

int ota_semver_cmp(const char *a, size_t alen, const char *b, size_t blen, int *cmp)
{
    sv_t va, vb;
    int i;
    if (a == NULL || b == NULL || cmp == NULL)
        return OTA_ERR_ARG;
    if (!parse(a, alen, &va) || !parse(b, blen, &vb))
        return OTA_ERR_VERSION;
    for (i = 0; i < 3; i++) {
        if (va.num[i] != vb.num[i]) {
            *cmp = va.num[i] < vb.num[i] ? -1 : 1;
            return OTA_OK;
        }
    }
    *cmp = cmp_pre(&va, &vb);
    return OTA_OK;
}
