"""Sphinx configuration of the documentation site (`make docs`; sources staged by docs/build_site.py in build/docs/all/src)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent/'_ext'))
import pneumokit

project, author, copyright = 'pneumokit', 'pneumokit developers', 'pneumokit developers'
release = version = pneumokit.__version__
extensions = ['myst_nb', 'sphinx.ext.autodoc', 'docments_fields']
exclude_patterns = ['**/.ipynb_checkpoints']

# The notebooks come executed (tests/run_notebooks.py --save-executed): never run them again here.
nb_execution_mode = 'off'
nb_ipywidgets_js = {}  # no widget manager from a CDN: build/docs gives widgets a static note instead
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3
suppress_warnings = ['mystnb.unknown_mime_type', 'myst.header']

# API entries: signature with its type hints, the docstring, then one field per parameter with its `# comment`.
default_role = 'py:obj'  # `name` in a docstring or comment links to its entry when there is one
add_module_names = False
autodoc_typehints = 'signature'
autodoc_member_order = 'bysource'
autodoc_preserve_defaults = True
python_maximum_signature_line_length = 100

html_theme = 'pydata_sphinx_theme'
html_title = f'pneumokit {release}'
html_copy_source = html_show_sourcelink = False
html_theme_options = {
    'navbar_align': 'left',
    'show_nav_level': 1,
    'navigation_depth': 2,
    'show_toc_level': 2,
    'secondary_sidebar_items': ['page-toc'],
    'footer_start': ['copyright'],
    'footer_end': ['sphinx-version'],
    'icon_links': [{'name': 'Repository', 'url': 'https://github.com/pneumokit/pneumokit', 'icon': 'fa-brands fa-github'}],
}
html_sidebars = {'index': []}
smartquotes = False  # comments and docstrings quote as written
