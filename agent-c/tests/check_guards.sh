#!/bin/sh
# Every header has an include guard (#ifndef X / #define X as its first
# directives), like mender-mcu's CI check.
rc=0
for h in $(find include src port tests -name '*.h'); do
    first=$(grep -m1 -E '^#(ifndef|if|define|include)' "$h")
    case "$first" in
    "#ifndef "*)
        g=${first#\#ifndef }
        grep -q "^#define $g\$" "$h" || { echo "bad include guard: $h"; rc=1; } ;;
    *) echo "no include guard: $h"; rc=1 ;;
    esac
done
[ $rc -eq 0 ] && echo "include guards: ok"
exit $rc
