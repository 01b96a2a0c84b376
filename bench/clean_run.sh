# Shared by the bench scripts whose runs record git_commit (accuracy.sh, recipe_speed.sh); sourced,
# with SCRIPT set to the caller's name for its messages.

# A clean tree, so that every run's git_commit has no "-dirty"; a new OUT folder, never overwritten.
start_clean_run() {   # out
    if ! git diff --quiet || ! git diff --cached --quiet; then
        echo "$SCRIPT: the working tree has uncommitted changes; commit them so that git_commit is clean" >&2
        exit 2
    fi
    if [ -e "$1" ]; then
        echo "$SCRIPT: $1 exists; give a new folder (results are never overwritten)" >&2
        exit 2
    fi
    mkdir -p "$1"
}

# Each run took git_commit when it started: a tracked file edited meanwhile marks it "-dirty".
refuse_dirty_runs() {   # out
    if grep -l '"git_commit": ".*-dirty"' "$1"/*/result.json; then
        echo "$SCRIPT: the runs above started from a modified tree; commit, and run again into a new folder" >&2
        exit 2
    fi
}
