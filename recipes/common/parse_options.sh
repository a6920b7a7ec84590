#!/usr/bin/env bash
# Kaldi-style option parsing for recipes: every `--name value` on the command
# line sets the shell variable `name`, which must already have a default.
# `--help` prints the variables' defaults. Source it after the defaults.
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            echo "usage: $0 [--option value ...]; options and defaults:" >&2
            for __name in ${__recipe_options:-}; do echo "  --${__name} ${!__name}" >&2; done
            exit 0 ;;
        --*=*) __name="${1%%=*}"; __name="${__name#--}"; __value="${1#*=}"; shift ;;
        --*)
            __name="${1#--}"
            if [ $# -lt 2 ]; then echo "$0: option --${__name} needs a value" >&2; exit 1; fi
            __value="$2"; shift 2 ;;
        *) break ;;
    esac
    __name="${__name//-/_}"
    if ! declare -p "${__name}" >/dev/null 2>&1; then
        echo "$0: unknown option --${__name}" >&2; exit 1
    fi
    printf -v "${__name}" '%s' "${__value}"
done
if [ $# -gt 0 ]; then echo "$0: unexpected argument '$1'" >&2; exit 1; fi
