# Finds the write_files entry of a #cloud-config whose path is `target` (awk -v target=PATH)
# and prints three things: its encoding (line 1, may be empty), its permissions (line 2, may be
# empty) and its content (the rest, as written: still encoded). Exits 1 when there is none.
#
# Not a YAML parser; it reads the two shapes a cloud-config is written in:
#   block style, as yaml.safe_dump or a person writes it:
#       write_files:
#       - path: /etc/usher/vm.json          (the list may also be indented under the key)
#         encoding: b64
#         permissions: '0600'
#         content: eyJuYW1l...              (plain, 'single' or "double" quoted, possibly
#                                            continued on more-indented lines, or a | or >
#                                            block scalar)
#   flow style / JSON (JSON is YAML too):
#       {"write_files": [{"path": "/etc/usher/vm.json", "encoding": "b64", "content": "..."}]}
# Runs under busybox awk in the guest (and mawk/gawk).

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

function unquote(s,   q) {
  s = trim(s)
  q = substr(s, 1, 1)
  if (length(s) >= 2 && q == "'" && substr(s, length(s), 1) == "'") {
    s = substr(s, 2, length(s) - 2)
    gsub(/''/, "'", s)
    return s
  }
  if (length(s) >= 2 && q == "\"" && substr(s, length(s), 1) == "\"") {
    s = substr(s, 2, length(s) - 2)
    gsub(/\\"/, "\"", s)
    gsub(/\\\//, "/", s)
    gsub(/\\n/, "\n", s)
    gsub(/\\\\/, "\\", s)
    return s
  }
  sub(/[ \t]+#.*$/, "", s)  # a comment after a plain scalar
  return s
}

# -- block style --

# the value being read belongs to key `key`; style "" (plain or quoted) or "|" / ">"
function finish_key() {
  if (key == "") return
  if (style == "") val[key] = unquote(cur)
  else val[key] = cur
  key = ""
}

function finish_item() {
  finish_key()
  if (initem && unquote(val["path"]) == target) {
    print val["encoding"]
    print val["permissions"]
    print val["content"]
    found = 1
  }
  initem = 0
  delete val
}

function block(   i, line, ind, body, inwf, colon) {
  inwf = 0; initem = 0; key = ""
  for (i = 1; i <= n && !found; i++) {
    line = lines[i]
    match(line, /^ */)
    ind = RLENGTH
    body = substr(line, ind + 1)
    if (key != "") {
      # a continuation line of the current value: more indented than its key
      if (body == "" || body ~ /^[ \t]*$/) {
        if (style != "") cur = cur "\n"
        continue
      }
      if (ind > keyind) {
        if (style == "|") {
          if (blockind < 0) blockind = ind
          cur = cur (cur == "" ? "" : "\n") substr(line, blockind + 1)
        } else {
          cur = cur (cur == "" ? "" : " ") trim(body)
        }
        continue
      }
      finish_key()
    }
    if (body == "" || body ~ /^#/) continue
    if (!inwf) {
      if (ind == 0 && body ~ /^write_files[ \t]*:[ \t]*$/) inwf = 1
      continue
    }
    if (ind == 0 && body !~ /^-/) {  # the next top-level key: write_files is over
      finish_item()
      inwf = 0
      continue
    }
    if (body ~ /^-([ \t]|$)/) {  # a new list item: "- key: value" or "-" alone
      finish_item()
      initem = 1
      body = substr(body, 2)
      match(body, /^[ \t]*/)
      ind = ind + 1 + RLENGTH
      body = substr(body, RLENGTH + 1)
      keyind = ind
      if (body == "") { keyind = -1; continue }
    }
    if (!initem) continue
    if (keyind < 0) keyind = ind
    colon = index(body, ":")
    if (colon < 2) continue
    key = trim(substr(body, 1, colon - 1))
    gsub(/^["']|["']$/, "", key)
    cur = trim(substr(body, colon + 1))
    style = ""
    blockind = -1
    if (cur ~ /^[|>][-+0-9]*$/) {
      style = substr(cur, 1, 1)
      cur = ""
    }
  }
  if (!found) finish_item()
  return found
}

# -- flow style: every innermost {...} is a candidate entry --

function fval(obj, name,   re, v) {
  re = "[\"']?" name "[\"']?[ \t]*:[ \t]*(\"[^\"]*\"|'[^']*'|[^,}]*)"
  if (!match(obj, re)) return ""
  v = substr(obj, RSTART, RLENGTH)
  sub(/^[^:]*:/, "", v)
  return unquote(v)
}

function flow(   flat, i, obj) {
  flat = ""
  for (i = 1; i <= n; i++) if (lines[i] !~ /^[ \t]*#/) flat = flat " " lines[i]
  while (match(flat, /\{[^{}]*\}/)) {
    obj = substr(flat, RSTART + 1, RLENGTH - 2)
    flat = substr(flat, RSTART + RLENGTH)
    if (fval(obj, "path") == target) {
      print fval(obj, "encoding")
      print fval(obj, "permissions")
      print fval(obj, "content")
      return 1
    }
  }
  return 0
}

{ sub(/\r$/, ""); lines[++n] = $0 }

END {
  found = 0
  if (block()) exit 0
  if (flow()) exit 0
  exit 1
}
