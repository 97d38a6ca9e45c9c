"""A restricted PowerShell interpreter: exactly the subset the collection's scripts use.

The collection sends fixed script text whose only variable part is one JSON document in a
single-quoted string literal, read with ConvertFrom-Json. This interpreter understands:

- statements: ``$var = <pipeline>``, ``[Console]::OutputEncoding = [System.Text.Encoding]::UTF8``,
  ``try { } catch { }``, ``if (<pipeline>) { } elseif (...) { } else { }``,
  ``foreach ($x in <pipeline>) { }``, and pipelines; separated by newlines or ``;``;
  ``#`` comments
- pipelines: an expression or a cmdlet call, then ``| <cmdlet> ...``
- cmdlet calls with named parameters only (``-Name value``, switches, ``a, b`` lists);
  each cmdlet's parameters are checked against its signature (``Cmdlet.params``)
- expressions: single-quoted strings (``''`` for a quote), integers, ``$true $false $null``,
  variables and ``$_`` (the error in a catch block), property access with member
  enumeration (``$p.Name``, ``$drives.Path``), ``@(...)``, hashtables ``@{k = v; ...}``,
  casts ``[string] [int] [long] [bool] [pscustomobject]``, comparisons
  ``-eq -ne -gt -ge -lt -le`` (case-insensitive like PowerShell), ``-and -or -not``

Anything else (double-quoted strings, backticks, script blocks, method calls, positional
arguments, unknown cmdlets or parameters, ...) raises ``PSParseError`` naming the
construct: the simulator never guesses, so a script that works here uses nothing it
cannot check. Semantics follow Windows PowerShell 5.1 where the collection depends on
them: arrays unroll in pipelines, enums serialize as numbers in ConvertTo-Json (use
``[string]`` to get the name), objects deeper than ``-Depth`` become strings, output is
written in the console's encoding (code page 437 unless the script sets UTF-8).
"""

from __future__ import annotations

import json
import re

KEYWORDS = {"try", "catch", "finally", "if", "elseif", "else", "foreach", "in", "function", "while", "for",
            "do", "switch", "return", "throw", "param", "begin", "process", "end", "trap", "break", "continue",
            "exit"}  # fmt: skip
SUPPORTED_KEYWORDS = {"try", "catch", "if", "elseif", "else", "foreach", "in"}
COMPARISONS = {"-eq", "-ne", "-gt", "-ge", "-lt", "-le"}


class PSParseError(Exception):
    """The script uses something outside the subset (or is not valid PowerShell)."""

    def __init__(self, message, line=None):
        self.line = line
        super().__init__("%s%s" % (message, " (line %d)" % line if line else ""))


class PSRuntimeError(Exception):
    """A terminating error as PowerShell's ErrorRecord: message, category, error id."""

    def __init__(
        self, message, category, error_id, target=None, exception="Microsoft.HyperV.PowerShell.VirtualizationException"
    ):
        super().__init__(message)
        self.message = message
        self.category = category
        self.error_id = error_id
        self.target = target
        self.exception = exception

    def record(self):
        """The $_ a catch block sees."""
        return PSObject(
            "System.Management.Automation.ErrorRecord",
            Exception=PSObject(self.exception, Message=self.message),
            CategoryInfo=PSObject(
                "System.Management.Automation.ErrorCategoryInfo",
                Category=PSEnum(
                    "System.Management.Automation.ErrorCategory", self.category, ERROR_CATEGORIES[self.category]
                ),
                Reason=self.exception.rsplit(".", 1)[-1],
                TargetName="" if self.target is None else str(self.target),
            ),
            FullyQualifiedErrorId=self.error_id,
            TargetObject=self.target,
        )


ERROR_CATEGORIES = {
    "NotSpecified": 0, "OpenError": 1, "CloseError": 2, "DeviceError": 3, "DeadlockDetected": 4,
    "InvalidArgument": 5, "InvalidData": 6, "InvalidOperation": 7, "InvalidResult": 8, "InvalidType": 9,
    "MetadataError": 10, "NotImplemented": 11, "NotInstalled": 12, "ObjectNotFound": 13,
    "OperationStopped": 14, "OperationTimeout": 15, "SyntaxError": 16, "ParserError": 17,
    "PermissionDenied": 18, "ResourceBusy": 19, "ResourceExists": 20, "ResourceUnavailable": 21,
    "ReadError": 22, "WriteError": 23, "FromStdErr": 24, "SecurityError": 25,
}  # fmt: skip


class PSEnum:
    """A .NET enum value: ConvertTo-Json writes its number, [string] its name."""

    def __init__(self, type_name, name, value):
        self.type_name, self.name, self.value = type_name, name, value

    def __str__(self):
        return self.name

    def __eq__(self, other):
        if isinstance(other, PSEnum):
            return self.value == other.value
        if isinstance(other, str):
            return self.name.lower() == other.lower()
        return self.value == other

    def __hash__(self):
        return hash(self.value)


class PSObject:
    """An object with ordered, case-insensitively named properties (a .NET object as
    PowerShell shows it, or a PSCustomObject)."""

    def __init__(self, type_name="System.Management.Automation.PSCustomObject", **props):
        self.type_name = type_name
        self.props = dict(props)

    def get(self, name):
        for key, value in self.props.items():
            if key.lower() == name.lower():
                return value
        return None

    def __str__(self):
        if self.type_name == "System.Management.Automation.PSCustomObject":
            return "@{%s}" % "; ".join("%s=%s" % (k, to_string(v)) for k, v in self.props.items())
        return self.type_name


class Hashtable(dict):
    """@{...}: keys compared case-insensitively, in insertion order (as [ordered])."""

    def get_ci(self, name):
        for key, value in self.items():
            if str(key).lower() == str(name).lower():
                return value
        return None


# ---------------------------------------------------------------- conversions


def to_string(value):
    if value is None:
        return ""
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, list):
        return " ".join(to_string(v) for v in value)
    if isinstance(value, Hashtable):
        return "System.Collections.Hashtable"
    return str(value)


def truthy(value):
    if isinstance(value, list):
        if not value:
            return False
        return truthy(value[0]) if len(value) == 1 else True
    if isinstance(value, PSEnum):
        return value.value != 0
    return bool(value)


def to_json(value, depth, compress):
    """ConvertTo-Json as Windows PowerShell 5.1 writes it."""

    def conv(v, level):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, PSEnum):
            return v.value
        if isinstance(v, list):
            return [conv(x, level) for x in v]
        if isinstance(v, (PSObject, Hashtable)):
            if level > depth:
                return to_string(v)
            items = v.props.items() if isinstance(v, PSObject) else v.items()
            return {str(k): conv(x, level + 1) for k, x in items}
        return str(v)

    data = conv(value, 1)
    if compress:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(data, ensure_ascii=False, indent=4)


def from_json(text):
    def conv(v):
        if isinstance(v, dict):
            return PSObject(**{k: conv(x) for k, x in v.items()})
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    try:
        return conv(json.loads(text))
    except ValueError as exc:
        raise PSRuntimeError(
            "Invalid JSON primitive: %s" % exc,
            "NotSpecified",
            "System.ArgumentException,Microsoft.PowerShell.Commands.ConvertFromJsonCommand",
            exception="System.ArgumentException",
        ) from exc


def member(value, name):
    """Property access with PowerShell's member enumeration over arrays."""
    if isinstance(value, list):
        if name.lower() in ("count", "length"):
            return len(value)
        out = []
        for item in value:
            got = member(item, name)
            if isinstance(got, list):
                out.extend(got)
            elif got is not None:
                out.append(got)
        return out
    if isinstance(value, PSObject):
        return value.get(name)
    if isinstance(value, Hashtable):
        if name.lower() == "count":
            return len(value)
        return value.get_ci(name)
    if isinstance(value, str) and name.lower() == "length":
        return len(value)
    if name.lower() == "count":
        return 0 if value is None else 1
    return None


def compare(op, left, right):
    def norm(v):
        if isinstance(v, PSEnum):
            return v.name.lower() if isinstance(right_raw, str) else v.value
        return v.lower() if isinstance(v, str) else v

    right_raw = right
    if isinstance(left, list):
        # A collection on the left filters it, as PowerShell does.
        return [x for x in left if compare(op, x, right)]
    a, b = norm(left), norm(right)
    if isinstance(a, str) and not isinstance(b, str) and b is not None:
        b = to_string(b).lower()
    if isinstance(a, int) and isinstance(b, str):
        try:
            b = int(b)
        except ValueError:
            a = str(a)
    if op == "-in":
        return any(compare("-eq", left, x) for x in unroll(right))
    if op == "-eq":
        return a == b
    if op == "-ne":
        return a != b
    if a is None or b is None:
        return False
    return {"-gt": a > b, "-ge": a >= b, "-lt": a < b, "-le": a <= b}[op]


def cast(type_name, value):
    t = type_name.lower()
    if t in ("string", "system.string"):
        return to_string(value)
    if t in ("int", "long", "int32", "int64", "system.int32", "system.int64", "uint64"):
        if isinstance(value, PSEnum):
            return value.value
        try:
            return int(value) if value is not None else 0
        except (TypeError, ValueError) as exc:
            raise PSRuntimeError(
                'Cannot convert value "%s" to type "%s".' % (to_string(value), type_name),
                "InvalidArgument",
                "InvalidCastFromStringToInteger",
                exception="System.Management.Automation.RuntimeException",
            ) from exc
    if t in ("bool", "system.boolean"):
        return truthy(value)
    if t in ("pscustomobject", "psobject"):
        if isinstance(value, Hashtable):
            return PSObject(**{str(k): v for k, v in value.items()})
        return value
    raise PSParseError("the cast [%s] is not in the simulator's PowerShell subset" % type_name)


# ---------------------------------------------------------------- tokens

QUOTES = "'\u2018\u2019\u201a\u201b"
TOKEN_RE = re.compile(
    r"""
    (?P<newline>\r?\n) |
    (?P<space>[ \t]+) |
    (?P<comment>\#[^\r\n]*) |
    (?P<string>[%(q)s](?:[^%(q)s]|[%(q)s]{2})*[%(q)s]) |
    (?P<var>\$[A-Za-z_][A-Za-z0-9_]*|\$_) |
    (?P<type>\[[A-Za-z][A-Za-z0-9_.]*\]) |
    (?P<dcolon>::) |
    (?P<atparen>@\() |
    (?P<atbrace>@\{) |
    (?P<number>\d+(?![A-Za-z0-9_])) |
    (?P<dash>-[A-Za-z][A-Za-z0-9_]*) |
    (?P<word>[A-Za-z_][A-Za-z0-9_-]*) |
    (?P<punct>[(){}|=,;.])
    """
    % {"q": QUOTES},
    re.VERBOSE,
)

REFUSED_CHARS = {
    '"': "double-quoted (expandable) strings",
    "`": "backtick escapes and line continuations",
    "@'": "here-strings",
    "$": "this variable form (only $name and $_ are supported)",
    "<#": "block comments",
    "[": "indexing and this type literal",
    "&": "the call operator &",
    ">": "redirection",
    "!": "the ! operator",
    "+": "arithmetic",
    "*": "arithmetic",
    "/": "arithmetic",
    "%": "the % alias / modulo",
    "?": "the ? alias",
    "-": "this operator",
}


def tokenize(text):
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        if text.startswith("<#", pos) or text.startswith("@'", pos) or text.startswith('@"', pos):
            key = text[pos : pos + 2]
            raise PSParseError(
                "%s are not in the simulator's PowerShell subset" % REFUSED_CHARS.get(key, "here-strings"), line
            )
        m = TOKEN_RE.match(text, pos)
        if not m:
            ch = text[pos]
            what = REFUSED_CHARS.get(ch, "the character %r" % ch)
            raise PSParseError(
                "%s (at %r) not in the simulator's PowerShell subset" % (what, text[pos : pos + 20]), line
            )
        kind = m.lastgroup
        value = m.group()
        if kind == "newline":
            tokens.append(("sep", "\n", line))
            line += 1
        elif kind == "string":
            # PowerShell ends a single-quoted string at typographic quotes too (U+2018-U+201B).
            tokens.append(("string", re.sub("([%s])[%s]" % (QUOTES, QUOTES), r"\1", value[1:-1]), line))
            line += value.count("\n")
        elif kind == "punct" and value == ";":
            tokens.append(("sep", ";", line))
        elif kind not in ("space", "comment"):
            tokens.append((kind, value, line))
        pos = m.end()
    tokens.append(("eof", "", line))
    return tokens


# ---------------------------------------------------------------- parser (to tuples)


class Parser:
    def __init__(self, text):
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, k=0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, kind, value=None):
        tok = self.peek()
        return tok[0] == kind and (value is None or tok[1].lower() == value)

    def expect(self, kind, value=None):
        tok = self.next()
        if tok[0] != kind or (value is not None and tok[1].lower() != value):
            raise PSParseError("expected %s, found %r" % (value or kind, tok[1] or "end of script"), tok[2])
        return tok

    def skip_seps(self, newlines_only=False):
        while self.at("sep") and (not newlines_only or self.peek()[1] == "\n"):
            self.next()

    def script(self):
        body = self.statements(end=("eof", None))
        self.expect("eof")
        return body

    def statements(self, end):
        out = []
        self.skip_seps()
        while not self.at(*end):
            out.append(self.statement())
            if not self.at(*end):
                if not self.at("sep"):
                    tok = self.peek()
                    raise PSParseError("unexpected %r after a statement" % tok[1], tok[2])
                self.skip_seps()
        return out

    def block(self):
        self.skip_seps(newlines_only=True)
        self.expect("punct", "{")
        body = self.statements(end=("punct", "}"))
        self.expect("punct", "}")
        return body

    def statement(self):
        tok = self.peek()
        if tok[0] == "word" and tok[1].lower() in KEYWORDS:
            kw = tok[1].lower()
            if kw not in SUPPORTED_KEYWORDS or kw in ("catch", "elseif", "else", "in"):
                raise PSParseError("the keyword '%s' is not in the simulator's PowerShell subset here" % tok[1], tok[2])
            return getattr(self, "stmt_" + kw)()
        if tok[0] == "var" and self.peek(1) == ("punct", "=", tok[2]):
            self.next()
            self.next()
            return ("assign", tok[1][1:].lower(), self.pipeline())
        if tok[0] == "type" and self.peek(1)[0] == "dcolon" and self.peek(3)[:2] == ("punct", "="):
            self.next()
            self.next()
            name = self.expect("word")[1]
            self.expect("punct", "=")
            return ("static_assign", tok[1][1:-1], name, self.pipeline(), tok[2])
        return ("pipe", self.pipeline())

    def stmt_try(self):
        line = self.next()[2]
        body = self.block()
        self.skip_seps(newlines_only=True)
        if not self.at("word", "catch"):
            raise PSParseError("try without catch (finally and typed catch are not in the subset)", line)
        self.next()
        if self.at("type"):
            raise PSParseError("typed catch blocks are not in the simulator's PowerShell subset", line)
        handler = self.block()
        self.skip_seps(newlines_only=True)
        if self.at("word", "finally"):
            raise PSParseError("finally is not in the simulator's PowerShell subset", line)
        return ("try", body, handler)

    def stmt_if(self):
        branches = []
        self.next()
        while True:
            self.expect("punct", "(")
            cond = self.pipeline()
            self.expect("punct", ")")
            branches.append((cond, self.block()))
            # Look past newlines for elseif/else without consuming a statement separator.
            save = self.i
            self.skip_seps(newlines_only=True)
            if self.at("word", "elseif"):
                self.next()
                continue
            if self.at("word", "else"):
                self.next()
                return ("if", branches, self.block())
            self.i = save
            return ("if", branches, None)

    def stmt_foreach(self):
        self.next()
        self.expect("punct", "(")
        var = self.expect("var")[1][1:].lower()
        self.expect("word", "in")
        source = self.pipeline()
        self.expect("punct", ")")
        return ("foreach", var, source, self.block())

    def pipeline(self):
        tok = self.peek()
        if tok[0] == "word" and tok[1].lower() not in KEYWORDS:
            stages = [self.command()]
        else:
            first = self.expression()
            if self.at("punct", ","):
                # The comma operator: 'a', 'b' is an array.
                items = [first]
                while self.at("punct", ","):
                    self.next()
                    self.skip_seps(newlines_only=True)
                    items.append(self.expression())
                first = ("list", items)
            stages = [first]
        while self.at("punct", "|"):
            self.next()
            self.skip_seps(newlines_only=True)
            tok = self.peek()
            if tok[0] != "word":
                raise PSParseError("only cmdlets can follow | in the simulator's PowerShell subset", tok[2])
            stages.append(self.command())
        return ("pipeline", stages)

    def command(self):
        name_tok = self.next()
        name, line = name_tok[1], name_tok[2]
        args = []
        while not self.at_arg_end():
            tok = self.peek()
            if tok[0] != "dash":
                raise PSParseError(
                    "positional argument %r to %s: the simulator's subset takes named parameters only" % (tok[1], name),
                    tok[2],
                )
            self.next()
            param = tok[1][1:]
            if self.at_arg_end() or self.at("dash"):
                args.append((param, None))  # a switch, or a missing value the signature check reports
                continue
            values = [self.arg_value()]
            while self.at("punct", ","):
                self.next()
                values.append(self.arg_value())
            args.append((param, values[0] if len(values) == 1 else ("list", values)))
        return ("command", name, args, line)

    def at_arg_end(self):
        return self.at("sep") or self.at("eof") or any(self.at("punct", p) for p in "|)}")

    def arg_value(self):
        if self.at("word") and self.peek()[1].lower() not in KEYWORDS:
            return ("const", self.next()[1])  # a bare word is a string in argument mode
        return self.postfix()

    def expression(self):
        left = self.and_or_operand()
        while self.at("dash") and self.peek()[1].lower() in ("-and", "-or"):
            op = self.next()[1].lower()
            self.skip_seps(newlines_only=True)
            left = ("logic", op, left, self.and_or_operand())
        return left

    def and_or_operand(self):
        left = self.unary()
        if self.at("dash"):
            tok = self.peek()
            op = tok[1].lower()
            if op in COMPARISONS:
                self.next()
                return ("compare", op, left, self.unary())
            if op not in ("-and", "-or"):
                raise PSParseError("the operator %s is not in the simulator's PowerShell subset" % tok[1], tok[2])
        return left

    def unary(self):
        if self.at("dash", "-not"):
            self.next()
            return ("not", self.unary())
        if self.at("type") and self.peek(1)[0] != "dcolon":
            type_name = self.next()[1][1:-1]
            return ("cast", type_name, self.unary())
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while self.at("punct", "."):
            self.next()
            tok = self.expect("word")
            if self.at("punct", "("):
                raise PSParseError("method calls (.%s()) are not in the simulator's PowerShell subset" % tok[1], tok[2])
            node = ("member", node, tok[1])
        return node

    def primary(self):
        tok = self.next()
        kind, value, line = tok
        if kind == "string":
            return ("const", value)
        if kind == "number":
            return ("const", int(value))
        if kind == "var":
            name = value[1:].lower()
            if name in ("true", "false", "null"):
                return ("const", {"true": True, "false": False, "null": None}[name])
            return ("var", name, line)
        if kind == "atparen":
            body = self.statements(end=("punct", ")"))
            self.expect("punct", ")")
            return ("array", body)
        if kind == "atbrace":
            return self.hashtable(line)
        if kind == "punct" and value == "(":
            inner = self.pipeline()
            self.expect("punct", ")")
            return ("paren", inner)
        if kind == "type" and self.at("dcolon"):
            self.next()
            return ("static", value[1:-1], self.expect("word")[1], line)
        if kind == "punct" and value == "{":
            raise PSParseError("script blocks are not in the simulator's PowerShell subset", line)
        raise PSParseError("unexpected %r: not in the simulator's PowerShell subset" % (value or "end of script"), line)

    def hashtable(self, line):
        items = []
        self.skip_seps()
        while not self.at("punct", "}"):
            tok = self.next()
            if tok[0] not in ("word", "string"):
                raise PSParseError("hashtable keys must be names or single-quoted strings, found %r" % tok[1], tok[2])
            self.expect("punct", "=")
            items.append((tok[1], self.pipeline()))
            if not self.at("punct", "}"):
                self.expect("sep")
            self.skip_seps()
        self.expect("punct", "}")
        return ("hashtable", items)


# ---------------------------------------------------------------- evaluation


class Cmdlet:
    """A cmdlet's signature and behaviour. ``params``: {name: 'value' | 'switch' | 'list'};
    ``pipeline``: the parameter pipeline input binds to (or None); ``run(args, inputs)``
    returns a list of output objects."""

    def __init__(self, name, params, run, pipeline=None, required=()):
        self.name, self.params, self.run, self.pipeline, self.required = name, params, run, pipeline, required


STATICS = {
    ("system.text.encoding", "utf8"): "utf-8",
    ("text.encoding", "utf8"): "utf-8",
}
STATIC_TARGETS = {("console", "outputencoding"), ("system.console", "outputencoding")}


class Interpreter:
    """Runs one script against a set of cmdlets (``host.HyperVHost`` provides them)."""

    def __init__(self, cmdlets):
        self.cmdlets = {name.lower(): c for name, c in cmdlets.items()}
        self.vars = {}
        self.stop = False  # $ErrorActionPreference = 'Stop'
        self.encoding = "cp437"  # what [Console]::OutputEncoding is until a script sets it
        self.errors = []  # non-terminating errors (written to stderr)
        self.last_failed = False

    def run(self, text):
        """(stdout bytes, stderr bytes, exit code) as powershell.exe -EncodedCommand gives them."""
        try:
            program = Parser(text).script()
        except PSParseError as exc:
            return b"", clixml_error("ParserError: %s" % exc), 1
        out = []
        try:
            self.exec_block(program, out)
        except PSParseError as exc:
            return self.encode(out), clixml_error("ParserError: %s" % exc), 1
        except PSRuntimeError as exc:
            err = "%s\r\n    + CategoryInfo          : %s\r\n    + FullyQualifiedErrorId : %s" % (
                exc.message,
                exc.category,
                exc.error_id,
            )
            return self.encode(out), clixml_error(err, self.errors), 1
        for obj in out:
            if not isinstance(obj, (str, int, bool)):
                # powershell.exe would format it as a table; the collection never wants that.
                what = getattr(obj, "type_name", type(obj).__name__)
                msg = "the simulator prints only strings and numbers, not %s: pipe it into ConvertTo-Json" % what
                return b"", clixml_error(msg, self.errors), 1
        stderr = clixml_error(None, self.errors) if self.errors else b""
        return self.encode(out), stderr, 1 if self.last_failed else 0

    def encode(self, objects):
        text = "".join(to_string(obj) + "\r\n" for obj in objects)
        # Code page 437 cannot say most non-ASCII characters: Windows writes '?'.
        return text.encode(self.encoding, errors="replace")

    # statements

    def exec_block(self, statements, out):
        for st in statements:
            before = len(self.errors)
            self.exec_stmt(st, out)
            # powershell -Command exits 1 when the last statement wrote an error ($? false).
            self.last_failed = len(self.errors) > before

    def exec_stmt(self, st, out):
        kind = st[0]
        if kind == "assign":
            value = self.eval_value(st[2])
            if st[1] == "erroractionpreference":
                if to_string(value).lower() not in ("stop", "continue"):
                    raise PSParseError("$ErrorActionPreference = %r is not in the subset (Stop or Continue)" % value)
                self.stop = to_string(value).lower() == "stop"
            self.vars[st[1]] = value
        elif kind == "static_assign":
            if (st[1].lower(), st[2].lower()) not in STATIC_TARGETS:
                raise PSParseError(
                    "assigning [%s]::%s is not in the simulator's PowerShell subset" % (st[1], st[2]), st[4]
                )
            value = self.eval_value(st[3])
            self.encoding = value if isinstance(value, str) else "cp437"
        elif kind == "pipe":
            out.extend(self.eval_pipeline(st[1]))
        elif kind == "try":
            try:
                self.exec_block(st[1], out)
            except PSRuntimeError as exc:
                saved = self.vars.get("_")
                self.vars["_"] = exc.record()
                try:
                    self.exec_block(st[2], out)
                finally:
                    self.vars["_"] = saved
        elif kind == "if":
            for cond, body in st[1]:
                if truthy(self.eval_value(cond)):
                    self.exec_block(body, out)
                    return
            if st[2] is not None:
                self.exec_block(st[2], out)
        elif kind == "foreach":
            for item in self.eval_pipeline(st[2]):
                self.vars[st[1]] = item
                self.exec_block(st[3], out)

    # pipelines: a list of output objects, arrays unrolled as PowerShell does

    def eval_value(self, node):
        """A pipeline's value where PowerShell assigns it: a lone expression keeps its
        value (an array stays an array); command output is $null, one object, or an array."""
        if len(node[1]) == 1 and node[1][0][0] != "command":
            return self.eval(node[1][0])
        got = self.eval_pipeline(node)
        return got[0] if len(got) == 1 else got if got else None

    def eval_pipeline(self, node):
        stages = node[1]
        first = stages[0]
        if first[0] == "command":
            items = self.call(first, None)
        else:
            items = unroll(self.eval(first))
        for stage in stages[1:]:
            items = self.call(stage, items)
        return items

    def call(self, node, inputs):
        _, name, raw_args, line = node
        cmd = self.cmdlets.get(name.lower())
        if cmd is None:
            raise PSParseError("the cmdlet %s is not in the simulator's PowerShell subset" % name, line)
        args = {}
        for pname, value in raw_args:
            match = [p for p in cmd.params if p.lower() == pname.lower()]
            if not match:
                raise PSParseError(
                    "%s has no parameter -%s in the simulator (known: %s)"
                    % (cmd.name, pname, ", ".join("-" + p for p in cmd.params)),
                    line,
                )
            pname = match[0]
            kind = cmd.params[pname]
            if kind == "switch":
                if value is not None:
                    raise PSParseError("-%s of %s is a switch and takes no value" % (pname, cmd.name), line)
                args[pname] = True
                continue
            if value is None:
                raise PSParseError("missing an argument for parameter -%s of %s" % (pname, cmd.name), line)
            if value[0] == "list":
                args[pname] = [self.eval(v) for v in value[1]]
            else:
                args[pname] = self.eval(value)
        for req in cmd.required:
            if req not in args and not (inputs is not None and cmd.pipeline == req):
                raise PSParseError("%s needs -%s in the simulator's subset" % (cmd.name, req), line)
        if inputs is not None and cmd.pipeline is None:
            raise PSParseError("%s does not take pipeline input in the simulator's subset" % cmd.name, line)
        try:
            return list(cmd.run(args, inputs))
        except PSRuntimeError as exc:
            if self.stop:
                raise
            self.errors.append(exc)
            return []

    # expressions

    def eval(self, node):
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "var":
            if node[1] not in self.vars:
                return None  # PowerShell's unset variable is $null (strict mode off)
            return self.vars[node[1]]
        if kind == "list":
            return [self.eval(x) for x in node[1]]
        if kind == "member":
            return member(self.eval(node[1]), node[2])
        if kind == "array":
            out = []
            self.exec_block(node[1], out)
            return out
        if kind == "hashtable":
            table = Hashtable()
            for key, value in node[1]:
                table[key] = self.eval_value(value)
            return table
        if kind == "paren":
            return self.eval_value(node[1])
        if kind == "cast":
            return cast(node[1], self.eval(node[2]))
        if kind == "static":
            key = (node[1].lower(), node[2].lower())
            if key not in STATICS:
                raise PSParseError("[%s]::%s is not in the simulator's PowerShell subset" % (node[1], node[2]), node[3])
            return STATICS[key]
        if kind == "compare":
            return compare(node[1], self.eval(node[2]), self.eval(node[3]))
        if kind == "logic":
            left = truthy(self.eval(node[2]))
            if node[1] == "-and":
                return left and truthy(self.eval(node[3]))
            return left or truthy(self.eval(node[3]))
        if kind == "not":
            return not truthy(self.eval(node[1]))
        raise PSParseError("cannot evaluate %s" % kind)


def unroll(value):
    if isinstance(value, list):
        return list(value)
    return [] if value is None else [value]


def clixml_error(message, earlier=()):
    """stderr as powershell.exe writes it for a remote caller: a CLIXML error stream
    (pywinrm's run_ps turns it back into text)."""

    def esc(text):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("\r\n", "_x000D__x000A_").replace("\n", "_x000A_")

    parts = ['<S S="Error">%s_x000D__x000A_</S>' % esc(e.message) for e in earlier]
    if message:
        parts.append('<S S="Error">%s_x000D__x000A_</S>' % esc(message))
    body = '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">%s</Objs>' % "".join(parts)
    return ("#< CLIXML\r\n" + body).encode("utf-8")


# ---------------------------------------------------------------- the generic cmdlets


def _convertfrom_json(args, inputs):
    text = args.get("InputObject")
    if inputs is not None:
        text = "\n".join(to_string(x) for x in inputs)
    yield from_json(to_string(text))


def _convertto_json(args, inputs):
    depth = int(args.get("Depth", 2))
    if inputs is not None:
        if not inputs:
            return
        value = inputs[0] if len(inputs) == 1 else inputs
    else:
        value = args.get("InputObject")
    yield to_json(value, depth, bool(args.get("Compress")))


def _select_object(args, inputs):
    names = args.get("Property")
    names = names if isinstance(names, list) else [names] if names is not None else None
    first = args.get("First")
    items = inputs if inputs is not None else []
    if first is not None:
        items = items[: int(first)]
    for item in items:
        if names is None:
            yield item
        else:
            yield PSObject(**{str(n): member(item, str(n)) for n in names})


def _where_object(args, inputs):
    ops = [op for op in ("EQ", "NE", "GT", "GE", "LT", "LE", "In") if args.get(op)]
    if len(ops) != 1 or "Property" not in args or "Value" not in args:
        raise PSParseError("Where-Object needs -Property, one comparison switch (-EQ ...) and -Value in the subset")
    for item in inputs or []:
        if compare("-" + ops[0].lower(), member(item, args["Property"]), args["Value"]):
            yield item


GENERIC_CMDLETS = {
    "ConvertFrom-Json": Cmdlet("ConvertFrom-Json", {"InputObject": "value"}, _convertfrom_json, pipeline="InputObject"),
    "ConvertTo-Json": Cmdlet(
        "ConvertTo-Json",
        {"InputObject": "value", "Depth": "value", "Compress": "switch"},
        _convertto_json,
        pipeline="InputObject",
    ),
    "Select-Object": Cmdlet(
        "Select-Object", {"Property": "list", "First": "value"}, _select_object, pipeline="InputObject"
    ),
    "Where-Object": Cmdlet(
        "Where-Object",
        {
            "Property": "value",
            "Value": "value",
            "EQ": "switch",
            "NE": "switch",
            "GT": "switch",
            "GE": "switch",
            "LT": "switch",
            "LE": "switch",
            "In": "switch",
        },  # fmt: skip
        _where_object,
        pipeline="InputObject",
    ),
}
