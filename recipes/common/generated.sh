# Folders a recipe generates carry a marker file. A recipe may replace such a
# folder; it refuses to delete one without the marker (put there by the user,
# or left by a run from before markers): move that away or delete it yourself.
#   . ../../common/generated.sh
#   replace_generated data/calib data/test   # checks all, then removes them
#   ...write them...
#   mark_generated data/calib data/test
GENERATED_MARK=.made_by_recipe

require_generated() {  # each DIR is absent, or a folder this recipe made
    local d
    for d in "$@"; do
        if [ -L "${d}" ] || { [ -e "${d}" ] && [ ! -f "${d}/${GENERATED_MARK}" ]; }; then
            echo "ERROR: ${d} exists but was not made by this recipe (no ${d}/${GENERATED_MARK}); it is not" \
                "deleted: move it away or delete it yourself" >&2
            return 1
        fi
    done
}

replace_generated() {  # remove each DIR if this recipe made it; refuse (removing nothing) otherwise
    require_generated "$@" || return 1
    rm -rf -- "$@"
}

mark_generated() {
    local d
    for d in "$@"; do mkdir -p "${d}" && : > "${d}/${GENERATED_MARK}"; done
}
