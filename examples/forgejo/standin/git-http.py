#!/opt/forge/bin/python3
"""The stand-in's git server: dulwich's smart HTTP, serving the one repository at the path a
Forgejo instance would give it (http://forge:3000/flatnet/hello.git), so that a workflow's
`${{ github.server_url }}/${{ github.repository }}` names it on both."""
import sys

from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import WSGIRequestHandlerLogger, WSGIServerLogger, make_server, make_wsgi_chain

repo_dir, owner_repo, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
repo = Repo(repo_dir)
backend = DictBackend({f"/{owner_repo}.git": repo, f"/{owner_repo}": repo})
server = make_server("0.0.0.0", port, make_wsgi_chain(backend),
                     handler_class=WSGIRequestHandlerLogger, server_class=WSGIServerLogger)
server.serve_forever()
