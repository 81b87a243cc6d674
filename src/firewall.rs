//! The host's packet filter for Flatnet: published ports (DNAT), egress (masquerading) and what
//! may be routed to the containers, in an nftables table of Flatnet's own. Nothing else is
//! touched.
//!
//! The table is not edited rule by rule: it is computed from the state on disk (host members
//! and attachment records) and replaced in one `nft` transaction. A crashed plugin, a killed
//! daemon or a setup that failed half-way therefore leaves no rule behind after the next
//! attach or detach: what is not recorded is not in the table.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, CT};
use nftables::expr::{Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::error::{Error, Result};
use crate::portmap::PortMapping;

/// 127.0.0.0/8.
const LOOPBACK_NET: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0));
/// Chain that holds one DNAT rule per published port; jumped to for local destinations.
const PORTS_CHAIN: &str = "published-ports";

/// What the table must say for one network on this host.
#[derive(Debug, Clone)]
pub struct NetworkRules {
    /// The host member's interface.
    pub ifname: String,
    /// The network's subnets, both families.
    pub subnets: Vec<IpNet>,
    pub internal: bool,
    pub ingress_filter: bool,
}

/// A published port and the container address it goes to (one of the mapping's family: a
/// port published on every address has one forward per container address).
#[derive(Debug, Clone)]
pub struct Forward {
    pub container: IpAddr,
    pub mapping: PortMapping,
}

/// Everything the table holds; empty means "no table".
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    pub networks: Vec<NetworkRules>,
    pub forwards: Vec<Forward>,
}

/// Replaces the table `name` with what `rules` says, atomically; removes it when empty.
pub fn apply(name: &str, rules: &Ruleset) -> Result<()> {
    run(name, build(name, rules))
}

/// Hands `nft` one batch (one transaction) about table `name`.
fn run(name: &str, batch: Batch<'static>) -> Result<()> {
    let nft = nft_program();
    nftables::helper::apply_ruleset_with_args(&batch.to_nftables(), Some(nft), NO_ARGS).map_err(
        |source| Error::Firewall {
            table: name.to_string(),
            source,
        },
    )
}

/// A batch that removes table `name` (created first if missing, so the delete never fails)
/// and, if `remake`, creates it again empty. nft applies a batch as one transaction: no
/// moment without rules.
fn replacing_table(name: &str, remake: bool) -> Batch<'static> {
    let table = || {
        NfListObject::Table(Table {
            family: NfFamily::INet,
            name: Cow::Owned(name.to_string()),
            handle: None,
        })
    };
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    if remake {
        batch.add(table());
    }
    batch
}

const NO_ARGS: &[&str] = &[];

/// Replaces the table `name` with redirects of TCP connections to `[::1]:host_port` onto
/// `[::1]:relay_port`, where flatnetd's loopback relay listens; removes it when empty. Only
/// locally made connections can be to `::1`, so the output hook is the only one.
pub fn apply_loopback_redirects(name: &str, redirects: &[(u16, u16)]) -> Result<()> {
    run(name, build_loopback_redirects(name, redirects))
}

fn build_loopback_redirects(name: &str, redirects: &[(u16, u16)]) -> Batch<'static> {
    let name: Cow<'static, str> = Cow::Owned(name.to_string());
    let mut batch = replacing_table(&name, !redirects.is_empty());
    if redirects.is_empty() {
        return batch;
    }
    batch.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: name.clone(),
        name: "output".into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Output),
        prio: Some(-100),
        ..Chain::default()
    }));
    for &(host_port, relay_port) in redirects {
        let expr = vec![
            is_eq(meta(MetaKey::Nfproto), string("ipv6")),
            is_eq(payload("ip6", "daddr"), ipv6_loopback()),
            is_eq(meta(MetaKey::L4proto), string("tcp")),
            is_eq(
                payload("th", "dport"),
                Expression::Number(u32::from(host_port)),
            ),
            Statement::Redirect(Some(NAT {
                addr: None,
                family: None,
                port: Some(Expression::Number(u32::from(relay_port))),
                flags: None,
            })),
        ];
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: name.clone(),
            chain: "output".into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }
    batch
}

/// `nft` where Debian installs it: a runtime may run plugins with a PATH without /usr/sbin.
fn nft_program() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("nft")
}

/// The transaction that replaces the table with what `rules` say.
fn build(name: &str, rules: &Ruleset) -> Batch<'static> {
    let name: Cow<'static, str> = Cow::Owned(name.to_string());
    let empty = rules.networks.is_empty() && rules.forwards.is_empty();
    let mut batch = replacing_table(&name, !empty);
    if empty {
        return batch;
    }
    let chain = |chain: &str, hook: Option<(NfHook, i32)>| Chain {
        family: NfFamily::INet,
        table: name.clone(),
        name: chain.to_string().into(),
        _type: hook.map(|_| NfChainType::NAT),
        hook: hook.map(|(h, _)| h),
        prio: hook.map(|(_, p)| p),
        ..Chain::default()
    };
    let rule = |chain: &str, expr: Vec<Statement<'static>>| Rule {
        family: NfFamily::INet,
        table: name.clone(),
        chain: chain.to_string().into(),
        expr: expr.into(),
        ..Rule::default()
    };
    // Published ports are for packets to this host's own addresses, from outside
    // (prerouting) and from the host itself (output: curl 127.0.0.1:PORT).
    batch.add(NfListObject::Chain(chain(PORTS_CHAIN, None)));
    for (hook_chain, hook) in [
        ("prerouting", NfHook::Prerouting),
        ("output", NfHook::Output),
    ] {
        batch.add(NfListObject::Chain(chain(hook_chain, Some((hook, -100)))));
        batch.add(NfListObject::Rule(rule(
            hook_chain,
            vec![
                is_eq(fib_daddr_type(), string("local")),
                Statement::Jump(JumpTarget {
                    target: PORTS_CHAIN.into(),
                }),
            ],
        )));
    }
    for forward in rules.forwards.iter().filter(|f| kernel_forwards(f)) {
        for (host_port, container_port) in forward.mapping.ports() {
            batch.add(NfListObject::Rule(rule(
                PORTS_CHAIN,
                dnat_rule(forward, host_port, container_port),
            )));
        }
    }
    // Defence in depth for `route_localnet` on the members: nothing arriving on a member may
    // reach the host's loopback (flatnetd already drops it; see kube-proxy's CVE-2020-8558).
    batch.add(NfListObject::Chain(Chain {
        _type: Some(NfChainType::Filter),
        ..chain("members-in", Some((NfHook::Prerouting, -300)))
    }));
    for network in &rules.networks {
        for (protocol, loopback) in [("ip", prefix(LOOPBACK_NET, 8)), ("ip6", ipv6_loopback())] {
            batch.add(NfListObject::Rule(rule(
                "members-in",
                vec![
                    is_eq(meta(MetaKey::Iifname), string(network.ifname.clone())),
                    is_eq(payload(protocol, "daddr"), loopback),
                    Statement::Drop(None),
                ],
            )));
        }
    }
    // An internal network is entered by its members and its published ports alone: another
    // network on this host must not route into it through the host (as Docker's isolation).
    batch.add(NfListObject::Chain(Chain {
        _type: Some(NfChainType::Filter),
        ..chain("internal-isolation", Some((NfHook::Forward, 0)))
    }));
    for network in rules.networks.iter().filter(|n| n.internal) {
        for expr in isolation_rules(network) {
            batch.add(NfListObject::Rule(rule("internal-isolation", expr)));
        }
    }
    // What the host routes to a filtered network's containers: only from Flatnet's own
    // interfaces, replies, and published ports.
    batch.add(NfListObject::Chain(Chain {
        _type: Some(NfChainType::Filter),
        ..chain("ingress", Some((NfHook::Forward, 0)))
    }));
    let members: Vec<&str> = rules.networks.iter().map(|n| n.ifname.as_str()).collect();
    for network in rules.networks.iter().filter(|n| n.ingress_filter) {
        for expr in ingress_rules(network, &members) {
            batch.add(NfListObject::Rule(rule("ingress", expr)));
        }
    }
    batch.add(NfListObject::Chain(chain(
        "postrouting",
        Some((NfHook::Postrouting, 100)),
    )));
    for network in &rules.networks {
        for expr in masquerade_rules(network) {
            batch.add(NfListObject::Rule(rule("postrouting", expr)));
        }
    }
    batch
}

/// Whether the kernel forwards this: flatnetd relays TCP on `[::1]` itself (the kernel cannot;
/// see `dataplane::services::loopback_ports`).
fn kernel_forwards(forward: &Forward) -> bool {
    !forward
        .mapping
        .host_ip
        .is_some_and(|ip| ip.is_ipv6() && ip.is_loopback())
}

/// `meta nfproto F [ip(6) daddr H] meta l4proto P th dport HP dnat ip(6) to C:CP`, F the
/// container address's family. On every IPv6 address, `::1` is left to flatnetd's relay.
fn dnat_rule(forward: &Forward, host_port: u16, container_port: u16) -> Vec<Statement<'static>> {
    let mapping = &forward.mapping;
    let (nfproto, protocol, family) = match forward.container {
        IpAddr::V4(_) => ("ipv4", "ip", NATFamily::IP),
        IpAddr::V6(_) => ("ipv6", "ip6", NATFamily::IP6),
    };
    let mut expr = vec![is_eq(meta(MetaKey::Nfproto), string(nfproto))];
    match mapping.host_ip {
        Some(ip) => expr.push(is_eq(payload(protocol, "daddr"), string(ip.to_string()))),
        None if forward.container.is_ipv6() => {
            expr.push(is_ne(payload(protocol, "daddr"), ipv6_loopback()));
        }
        None => {}
    }
    expr.push(is_eq(
        meta(MetaKey::L4proto),
        string(mapping.protocol.as_str()),
    ));
    expr.push(is_eq(
        payload("th", "dport"),
        Expression::Number(u32::from(host_port)),
    ));
    expr.push(Statement::DNAT(Some(NAT {
        addr: Some(string(forward.container.to_string())),
        family: Some(family),
        port: Some(Expression::Number(u32::from(container_port))),
        flags: None,
    })));
    expr
}

/// A connection from the host's loopback to a published port leaves through the host member
/// with source 127.0.0.1, which the container cannot answer: give it the member's address
/// (with `route_localnet` on the member, as Podman's bridge does). On an internal network the
/// containers have no route out, so every connection to a published port gets the member's
/// address. A network that is not internal masquerades its containers' traffic to the host's
/// other networks, IPv6 too (as Podman does for its IPv6 bridges: the containers' unique local
/// addresses are no one else's to route back).
fn masquerade_rules(network: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let oifname = || meta(MetaKey::Oifname);
    let masquerade = || Statement::Masquerade(None);
    let into_member = || is_eq(oifname(), string(network.ifname.clone()));
    let mut rules = vec![vec![
        into_member(),
        is_eq(payload("ip", "saddr"), prefix(LOOPBACK_NET, 8)),
        masquerade(),
    ]];
    if network.internal {
        rules.push(vec![into_member(), was_dnat(), masquerade()]);
    } else {
        for subnet in &network.subnets {
            let protocol = if subnet.addr().is_ipv4() { "ip" } else { "ip6" };
            rules.push(vec![
                is_eq(
                    payload(protocol, "saddr"),
                    prefix(subnet.network(), subnet.prefix_len()),
                ),
                is_ne(oifname(), string(network.ifname.clone())),
                masquerade(),
            ]);
        }
    }
    rules
}

/// Forwarded traffic into or out of an internal network's member passes only if it belongs to
/// a published port's connection (either direction: the conntrack entry is marked DNAT) or
/// stays within the member. Our `accept` ends this chain only; other tables still decide.
fn isolation_rules(network: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let member = || string(network.ifname.clone());
    let mut rules = Vec::new();
    for (this_side, other_side) in [
        (MetaKey::Oifname, MetaKey::Iifname),
        (MetaKey::Iifname, MetaKey::Oifname),
    ] {
        rules.push(vec![
            is_eq(meta(this_side), member()),
            was_dnat(),
            Statement::Accept(None),
        ]);
        rules.push(vec![
            is_eq(meta(this_side), member()),
            is_ne(meta(other_side), member()),
            Statement::Drop(None),
        ]);
    }
    rules
}

/// Forwarded traffic into a filtered network's member passes if it comes from one of this
/// host's Flatnet members, belongs to a connection a container opened (or to one it accepted
/// through the filter), or is for a published port; anything else routed here is dropped.
/// Without it, a neighbour with a route to the subnet via this host reaches every container
/// port, published or not (Docker 28 closed the same hole in its bridge networks).
fn ingress_rules(network: &NetworkRules, members: &[&str]) -> Vec<Vec<Statement<'static>>> {
    let into_member = || is_eq(meta(MetaKey::Oifname), string(network.ifname.clone()));
    let accept = || Statement::Accept(None);
    let flatnet_interfaces = members
        .iter()
        .map(|m| SetItem::Element(string(*m)))
        .collect();
    vec![
        vec![
            into_member(),
            ct_state_in(&["established", "related"]),
            accept(),
        ],
        vec![into_member(), was_dnat(), accept()],
        vec![
            into_member(),
            is_eq(
                meta(MetaKey::Iifname),
                Expression::Named(NamedExpression::Set(flatnet_interfaces)),
            ),
            accept(),
        ],
        vec![into_member(), Statement::Drop(None)],
    ]
}

/// `ct state { ... }`.
fn ct_state_in(states: &[&'static str]) -> Statement<'static> {
    Statement::Match(Match {
        left: conntrack("state"),
        right: Expression::List(states.iter().map(|s| string(*s)).collect()),
        op: Operator::IN,
    })
}

fn conntrack(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

/// `ct status dnat`: the connection came in through a published port.
fn was_dnat() -> Statement<'static> {
    Statement::Match(Match {
        left: conntrack("status"),
        right: string("dnat"),
        op: Operator::IN,
    })
}

fn is_eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn string(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// `::1` (a single address needs no prefix).
fn ipv6_loopback() -> Expression<'static> {
    string(Ipv6Addr::LOCALHOST.to_string())
}

fn prefix(addr: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(addr.to_string())),
        len: u32::from(len),
    }))
}

fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(name: &str, rules: &Ruleset) -> String {
        serde_json::to_string(&build(name, rules).to_nftables()).unwrap()
    }

    #[test]
    fn an_empty_ruleset_only_removes_the_table() {
        let text = json("flatnet-t", &Ruleset::default());
        assert!(text.contains(r#"{"delete":{"table""#), "{text}");
        assert!(!text.contains("chain"), "{text}");
    }

    #[test]
    fn published_ports_become_dnat_rules_one_per_port() {
        let rules = Ruleset {
            networks: vec![NetworkRules {
                ifname: "fn-1".into(),
                subnets: vec!["10.77.0.0/16".parse().unwrap()],
                internal: false,
                ingress_filter: false,
            }],
            forwards: vec![Forward {
                container: "10.77.0.5".parse().unwrap(),
                mapping: PortMapping::new("127.0.0.1", 9000, 7000, "udp", 2).unwrap(),
            }],
        };
        let text = json("flatnet-t", &rules);
        let dnats = text.matches(r#""dnat""#).count();
        assert_eq!(dnats, 2, "{text}");
        for needle in [
            r#""addr":"10.77.0.5""#,
            r#""port":7001"#,
            r#""right":9001"#,
            r#""right":"127.0.0.1""#,
            r#""right":"udp""#,
            r#""masquerade""#,
            r#""op":"!=""#,
            r#"{"meta":{"key":"iifname"}},"right":"fn-1""#,
            r#""drop""#,
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn ipv6_loopback_is_left_to_the_relay() {
        let forward = |host_ip: &str| Forward {
            container: "fd77::5".parse().unwrap(),
            mapping: PortMapping::new(host_ip, 8080, 80, "tcp", 1).unwrap(),
        };
        let rules = |forwards| Ruleset {
            networks: Vec::new(),
            forwards,
        };
        let everywhere = json("flatnet-t", &rules(vec![forward("")]));
        assert_eq!(everywhere.matches(r#""dnat""#).count(), 1, "{everywhere}");
        let skip_loopback = r#""field":"daddr"}},"right":"::1","op":"!=""#;
        assert!(everywhere.contains(skip_loopback), "{everywhere}");
        let loopback_only = json("flatnet-t", &rules(vec![forward("::1")]));
        assert!(!loopback_only.contains(r#""dnat""#), "{loopback_only}");
    }

    #[test]
    fn loopback_redirects_send_each_port_to_its_relay() {
        let empty = serde_json::to_string(&build_loopback_redirects("r", &[]).to_nftables());
        assert!(!empty.unwrap().contains("chain"));
        let batch = build_loopback_redirects("r", &[(8080, 40001), (8081, 40002)]);
        let text = serde_json::to_string(&batch.to_nftables()).unwrap();
        assert_eq!(text.matches(r#""redirect""#).count(), 2, "{text}");
        for needle in [r#""right":8081"#, r#""port":40002"#, r#""right":"::1""#] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    fn text(rules: &[Vec<Statement<'static>>]) -> String {
        serde_json::to_string(rules).unwrap()
    }

    #[test]
    fn an_internal_network_masquerades_published_connections_not_its_containers() {
        let network = NetworkRules {
            ifname: "fn-1".into(),
            subnets: vec!["10.77.0.0/16".parse().unwrap()],
            internal: true,
            ingress_filter: false,
        };
        let internal = text(&masquerade_rules(&network));
        assert!(internal.contains(r#""ct":{"key":"status"}"#), "{internal}");
        assert!(!internal.contains("10.77.0.0"), "{internal}");
        let open = text(&masquerade_rules(&NetworkRules {
            internal: false,
            ..network
        }));
        assert!(!open.contains(r#""ct""#), "{open}");
        assert!(open.contains("10.77.0.0"), "{open}");
    }

    #[test]
    fn only_internal_networks_are_closed_to_forwarding_but_for_published_ports() {
        let network = |ifname: &str, internal| NetworkRules {
            ifname: ifname.into(),
            subnets: vec!["10.77.0.0/16".parse().unwrap()],
            internal,
            ingress_filter: false,
        };
        let rules = Ruleset {
            networks: vec![network("fn-int", true), network("fn-open", false)],
            forwards: vec![],
        };
        let table = json("flatnet-t", &rules);
        let isolating = table.matches(r#""chain":"internal-isolation""#).count();
        assert_eq!(isolating, 4, "{table}");

        let internal = text(&isolation_rules(&network("fn-int", true)));
        for needle in [
            r#"{"meta":{"key":"oifname"}},"right":"fn-int""#,
            r#"{"meta":{"key":"iifname"}},"right":"fn-int""#,
            r#""right":"dnat""#,
            r#""accept""#,
            r#""op":"!=""#,
            r#""drop""#,
        ] {
            assert!(
                internal.contains(needle),
                "{needle} missing from {internal}"
            );
        }
    }

    #[test]
    fn only_filtered_networks_drop_what_is_routed_in_from_elsewhere() {
        let network = |ifname: &str, ingress_filter| NetworkRules {
            ifname: ifname.into(),
            subnets: vec!["10.77.0.0/16".parse().unwrap()],
            internal: false,
            ingress_filter,
        };
        let rules = Ruleset {
            networks: vec![network("fn-shut", true), network("fn-open", false)],
            forwards: vec![],
        };
        let table = json("flatnet-t", &rules);
        let filtering = table.matches(r#""chain":"ingress""#).count();
        assert_eq!(
            filtering, 4,
            "four rules for fn-shut, none for fn-open: {table}"
        );

        let shut = ingress_rules(&network("fn-shut", true), &["fn-shut", "fn-open"]);
        let last = text(&shut[shut.len() - 1..]);
        assert!(last.contains(r#""drop""#), "{last}");
        assert!(shut[..shut.len() - 1]
            .iter()
            .all(|rule| text(std::slice::from_ref(rule)).contains(r#""accept""#)));
        let all = text(&shut);
        for needle in [
            r#"{"meta":{"key":"oifname"}},"right":"fn-shut""#,
            r#""right":["established","related"]"#,
            r#""right":"dnat""#,
            r#"{"meta":{"key":"iifname"}},"right":{"set":["fn-shut","fn-open"]}"#,
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }
}
