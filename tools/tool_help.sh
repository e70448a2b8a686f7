# Sourced first by the tools/*.sh that a user runs: `--help` prints the script's header comment (line 2
# to the first line that is not a comment) and exits before anything runs; any other argument is refused,
# as these scripts read their settings from the environment.
case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed -E 's/^# ?//'; exit 0 ;;
  ?*) echo "error: tools/$(basename "$0") takes no arguments; set its variables in the environment (see --help)" >&2
      exit 2 ;;
esac
