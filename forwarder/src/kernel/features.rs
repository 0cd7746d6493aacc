//! What this kernel lets the datapath do, probed once before loading.

use std::sync::OnceLock;

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};
use tracing::{info, warn};

/// Kernel abilities the datapath adapts to at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// XDP programs may call `bpf_xdp_adjust_meta`, so XDP can tag the
    /// packets it hands to TC. Some kernels refuse the helper to XDP; the
    /// TC program beside XDP then looks at every packet XDP passed.
    pub xdp_metadata: bool,
}

impl Features {
    /// This kernel's features (probed on the first call).
    pub fn probe() -> Self {
        static PROBED: OnceLock<Features> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let xdp_metadata =
                match is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_meta) {
                    Ok(supported) => supported,
                    Err(err) => {
                        warn!("probing bpf_xdp_adjust_meta for XDP: {err}; assuming it is refused");
                        false
                    }
                };
            if !xdp_metadata {
                info!(
                    "this kernel refuses bpf_xdp_adjust_meta to XDP programs: the TC program beside XDP \
                     looks at every packet XDP passes"
                );
            }
            Features { xdp_metadata }
        })
    }
}
