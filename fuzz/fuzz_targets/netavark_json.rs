//! The JSON netavark hands the plugin on stdin (`create`, `setup`), translated as the plugin
//! does (through its library).
#![no_main]

use flatnet_netavark::translate;

use netavark::network::types::{Network, NetworkPluginExec};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(network) = serde_json::from_slice::<Network>(data) {
        if let Ok(normalised) = translate::normalise(network) {
            let _ = translate::config_of(&normalised);
        }
    }
    if let Ok(exec) = serde_json::from_slice::<NetworkPluginExec>(data) {
        let _ = translate::config_of(&exec.network);
        let _ = translate::names(&exec);
        let _ = translate::ports(&exec);
        let _ = translate::refuse_container_options(&exec.network_options);
        let _ = translate::static_ips(&exec.network_options);
    }
});
