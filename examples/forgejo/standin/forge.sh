#!/bin/sh
# The forge of the stand-in, in one container: git over smart HTTP on port 3000 (dulwich) and a
# buildbot master with its web UI and REST API on 8010 and the worker port 9989. A push runs the
# repository's post-receive hook, which tells the master (its change hook), which runs the
# repository's workflow on the runner: what Forgejo does with a push and its runner.
set -eu
export PATH=/opt/forge/bin:$PATH
repo=/srv/git/hello.git
git init -q --bare -b main "$repo"
cp /opt/standin/post-receive.py "$repo/hooks/post-receive"
buildbot create-master -q /srv/master
cp /opt/standin/master.cfg /srv/master/master.cfg
python3 -m dulwich.web -l 0.0.0.0 -p 3000 "$repo" &
exec buildbot start --nodaemon /srv/master
