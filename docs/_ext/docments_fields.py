"""A Sphinx extension: the `# comment` after each parameter (fastcore's docments, the nbdev style pneumokit documents
with) becomes a `:param name: comment` field of the autodoc entry, so the API pages list every parameter with its comment
the way nbdev's `show_doc` does. Autodoc alone reads only docstrings."""
import re

from fastcore.docments import docments


def _target(obj, what: str):
    "The callable whose parameters document `obj`: a class's `__init__`, a property's getter, else `obj` itself."
    if what == 'class': return obj.__init__ if '__init__' in vars(obj) else None
    if isinstance(obj, property): return obj.fget
    return obj if callable(obj) else None


_NAME = re.compile(r'[A-Za-z_][\w.]*(\(\))?')
_SPAN = re.compile(r'``.+?``|:`[^`]+`|`[^`]+`')


def _code(text: str) -> str:
    """Markdown code spans as rST: `name` stays a cross-reference (the default role), other code (`.npy`, `fold<k>`)
    becomes a literal; a span glued to the next word (`Figure`s) gets the escaped space rST needs."""
    def f(m):
        s, after = m[0], text[m.end():m.end() + 1]
        if not (s.startswith('``') or s.startswith(':') or _NAME.fullmatch(s[1:-1])): s = f'`{s}`'
        return s + ('\\ ' if re.match(r'\w', after) else '')
    return _SPAN.sub(f, text)


def _rst(comment: str) -> str:
    "A comment as rST text that reads as written: `*`, `|` and a word's trailing `_` escaped outside code spans."
    if comment.count('`') % 2: comment = comment.replace('`', "'")  # an unpaired backtick: no role at all
    parts = comment.split('`')
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r'_(?=\W|$)', r'\\_', parts[i].replace('\\', '\\\\').replace('*', r'\*').replace('|', r'\|'))
    return _code('`'.join(parts))


def param_comments(obj, what: str = 'function') -> dict[str, str]:
    "Parameter name -> its docments comment (`return` for the return value), for the parameters that have one."
    f = _target(obj, what)
    if f is None: return {}
    try: docs = docments(f, full=True)
    except (TypeError, ValueError, OSError, SyntaxError, IndentationError): return {}  # built-ins, no source
    return {k: ' '.join(str(v['docment']).split()) for k, v in docs.items() if v['docment'] and k != 'self'}


def _fields(app, what, name, obj, options, lines):
    "autodoc-process-docstring: append a `:param:` field per commented parameter (and `:returns:`), unless already there."
    lines[:] = [_code(l) for l in lines]  # nbdev docstrings use markdown code spans
    if what not in ('function', 'method', 'class', 'staticmethod', 'classmethod'): return
    comments = param_comments(obj, what)
    if not comments: return
    text = '\n'.join(lines)
    new = [f':param {k}: {_rst(v)}' for k, v in comments.items() if k != 'return' and f':param {k}:' not in text]
    if 'return' in comments and ':returns:' not in text: new.append(f":returns: {_rst(comments['return'])}")
    if new: lines.extend(['', *new])


def setup(app):
    app.connect('autodoc-process-docstring', _fields)
    return {'version': '1.0', 'parallel_read_safe': True}
