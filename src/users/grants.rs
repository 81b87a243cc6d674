//! What the operator lets rootless users do: `/etc/flatnet/users.json` (`flatnetd run
//! --users`). Read again for every request, so a grant taken away holds from the next one.
//!
//! ```json
//! {"networks": {"team": {"subnets": ["10.91.0.0/24"], "users": ["alice"], "groups": ["dev"],
//!   "blocks": {"alice": ["10.91.0.64/26"]}, "max_containers": 16}},
//!  "requests_per_second": 20}
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
use serde::Deserialize;

use crate::error::{Error, IoContext, Result};

pub const DEFAULT_GRANTS: &str = "/etc/flatnet/users.json";
const DEFAULT_MAX_CONTAINERS: usize = 32;
const DEFAULT_REQUESTS_PER_SECOND: u32 = 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkGrant>,
    /// Requests a user may make per second (twice as many in a burst).
    #[serde(default = "default_rate")]
    pub requests_per_second: u32,
}

/// One network rootless users may join: its definition (what a rootful network's options
/// would say) and who may join it with what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkGrant {
    /// One per family, as `podman network create --subnet` takes them.
    pub subnets: Vec<IpNet>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub internal: bool,
    /// User names or numeric ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names or numeric ids: their members may join too.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Addresses a user's containers take, per user: theirs alone. A user without a block
    /// takes any address outside the others' blocks.
    #[serde(default)]
    pub blocks: BTreeMap<String, Vec<IpNet>>,
    /// Containers each user may have on the network on this host.
    #[serde(default = "default_max_containers")]
    pub max_containers: usize,
}

fn default_rate() -> u32 {
    DEFAULT_REQUESTS_PER_SECOND
}

fn default_max_containers() -> usize {
    DEFAULT_MAX_CONTAINERS
}

/// Who is asking: their uid, as `SO_PEERCRED` gives it, and what that uid is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The user's name; the uid as text when the password database has none.
    pub name: String,
    /// The user's groups (primary and supplementary), by name and id.
    groups: Vec<(String, u32)>,
}

impl Caller {
    /// The caller as this host's user database knows them.
    pub fn lookup(uid: u32) -> Caller {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let name = user
            .as_ref()
            .map_or_else(|| uid.to_string(), |u| u.name.clone());
        let gids = user
            .as_ref()
            .and_then(|u| {
                let c_name = std::ffi::CString::new(u.name.clone()).ok()?;
                getgrouplist(&c_name, u.gid).ok()
            })
            .unwrap_or_default();
        let groups = gids.into_iter().map(|gid| (group_name(gid), gid.as_raw()));
        Caller {
            uid,
            name,
            groups: groups.collect(),
        }
    }

    #[cfg(test)]
    pub fn new(uid: u32, name: &str, groups: &[(&str, u32)]) -> Caller {
        Caller {
            uid,
            name: name.into(),
            groups: groups.iter().map(|(n, g)| (n.to_string(), *g)).collect(),
        }
    }

    fn is(&self, who: &str) -> bool {
        who == self.name || who == self.uid.to_string()
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups
            .iter()
            .any(|(name, gid)| group == name || group == gid.to_string())
    }
}

fn group_name(gid: Gid) -> String {
    Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

impl Grants {
    pub fn load(path: &Path) -> Result<Grants> {
        let text =
            std::fs::read_to_string(path).context(|| format!("reading {}", path.display()))?;
        let grants: Grants = serde_json::from_str(&text)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
        grants.validate(path)?;
        Ok(grants)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(format!("{}: {msg}", path.display())));
        for (name, grant) in &self.networks {
            for (user, blocks) in &grant.blocks {
                for block in blocks {
                    if !grant.subnets.iter().any(|s| s.contains(block)) {
                        return bad(format!(
                            "network {name}: {user}'s block {block} is outside its subnets"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The network's grant, if the caller may join it; the refusal names the rule.
    pub fn network(&self, caller: &Caller, network: &str) -> Result<&NetworkGrant> {
        let Some(grant) = self.networks.get(network) else {
            return Err(Error::NotPermitted(format!(
                "network {network} is not open to rootless users on this host \
                 (no entry in the operator's grants)"
            )));
        };
        let named = grant.users.iter().any(|u| caller.is(u));
        let grouped = grant.groups.iter().any(|g| caller.in_group(g));
        if named || grouped {
            Ok(grant)
        } else {
            Err(Error::NotPermitted(format!(
                "user {} (uid {}) is not granted network {network}: its grant names users [{}] \
                 and groups [{}]",
                caller.name,
                caller.uid,
                grant.users.join(", "),
                grant.groups.join(", ")
            )))
        }
    }
}

impl NetworkGrant {
    /// The caller's own blocks, if the operator gave them any.
    pub fn blocks_of(&self, caller: &Caller) -> &[IpNet] {
        self.blocks
            .iter()
            .find(|(user, _)| caller.is(user))
            .map_or(&[], |(_, blocks)| blocks.as_slice())
    }

    /// Whether the caller may hold `ip`: never in another user's block, and inside their own
    /// block of its family if they have one.
    pub fn check_address(&self, caller: &Caller, network: &str, ip: IpAddr) -> Result<()> {
        let others = self.blocks.iter().filter(|(user, _)| !caller.is(user));
        for (user, blocks) in others {
            if let Some(block) = blocks.iter().find(|b| b.contains(&ip)) {
                return Err(Error::NotPermitted(format!(
                    "{ip} is in {user}'s block {block} of network {network}"
                )));
            }
        }
        let family = |net: &&IpNet| net.addr().is_ipv4() == ip.is_ipv4();
        match self.blocks_of(caller).iter().find(family) {
            Some(own) if !own.contains(&ip) => Err(Error::NotPermitted(format!(
                "{ip} is outside {}'s block {own} of network {network}",
                caller.name
            ))),
            _ => Ok(()),
        }
    }
}

/// Where the grants are read from: `--users`, else the default path.
pub fn grants_path(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_GRANTS), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(json: &str) -> Grants {
        let grants: Grants = serde_json::from_str(json).unwrap();
        grants.validate(Path::new("users.json")).unwrap();
        grants
    }

    const TEAM: &str = r#"{"networks": {"team": {"subnets": ["10.91.0.0/24", "fd91::/64"],
        "users": ["alice", "3000"], "groups": ["dev"],
        "blocks": {"alice": ["10.91.0.64/26"], "bob": ["10.91.0.128/26"]}}}}"#;

    #[test]
    fn users_groups_and_ids_are_granted_and_others_refused_by_rule() {
        let grants = grants(TEAM);
        let alice = Caller::new(2001, "alice", &[("alice", 2001)]);
        let by_id = Caller::new(3000, "carol", &[]);
        let dev = Caller::new(2002, "bob", &[("bob", 2002), ("dev", 500)]);
        let mallory = Caller::new(2003, "mallory", &[("mallory", 2003)]);
        for caller in [&alice, &by_id, &dev] {
            assert!(grants.network(caller, "team").is_ok(), "{caller:?}");
        }
        let refused = grants.network(&mallory, "team").unwrap_err().to_string();
        assert!(
            refused.contains("mallory") && refused.contains("[alice, 3000]"),
            "{refused}"
        );
        let unknown = grants.network(&alice, "other").unwrap_err();
        assert!(matches!(unknown, Error::NotPermitted(m) if m.contains("other")));
    }

    #[test]
    fn a_block_is_its_user_s_alone() {
        let grants = grants(TEAM);
        let team = &grants.networks["team"];
        let alice = Caller::new(2001, "alice", &[]);
        let bob = Caller::new(2002, "bob", &[]);
        let carol = Caller::new(3000, "carol", &[]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(team.check_address(&alice, "team", ip("10.91.0.70")).is_ok());
        let bobs = team.check_address(&alice, "team", ip("10.91.0.130"));
        assert!(bobs.unwrap_err().to_string().contains("in bob's block"));
        let outside = team.check_address(&alice, "team", ip("10.91.0.200"));
        assert!(outside
            .unwrap_err()
            .to_string()
            .contains("outside alice's block"));
        let theirs = team.check_address(&carol, "team", ip("10.91.0.70"));
        assert!(theirs.unwrap_err().to_string().contains("alice's block"));
        assert!(team.check_address(&carol, "team", ip("10.91.0.9")).is_ok());
        // No IPv6 block: any IPv6 address nobody else's.
        assert!(team.check_address(&bob, "team", ip("fd91::9")).is_ok());
    }

    #[test]
    fn blocks_outside_the_subnets_and_unknown_fields_are_refused() {
        let outside = r#"{"networks": {"n": {"subnets": ["10.91.0.0/24"],
            "blocks": {"alice": ["10.92.0.0/26"]}}}}"#;
        let parsed: Grants = serde_json::from_str(outside).unwrap();
        let err = parsed
            .validate(Path::new("u.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.92.0.0/26"), "{err}");
        let typo = r#"{"networks": {"n": {"subnets": ["10.91.0.0/24"], "user": ["a"]}}}"#;
        assert!(serde_json::from_str::<Grants>(typo).is_err());
    }
}
