//! The network config a CNI runtime writes to flatnet-cni's stdin, parsed as the plugin does
//! (through its library), down to the core's validated config.
#![no_main]

use flatnet_cni::protocol;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol::version_result(data);
    let Ok(conf) = protocol::NetConf::parse(data) else {
        return;
    };
    let _ = conf.port_mappings();
    let _ = conf.aliases();
    let _ = conf.flatnet_config();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = protocol::CniArgs::parse(text);
    }
});
