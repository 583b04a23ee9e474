//! The `default` kernel and image, built on first use when allowed.

use banger_api::asset::{ImageBuildRequest, ImageRecord, KernelAddRequest, KernelRecord};

use crate::core::Core;
use crate::error::{AssetBuildError, CoreError};
use crate::progress::ProgressSink;

use super::DEFAULT_ASSET;

impl Core {
    /// Makes sure the kernel and image a VM names exist, building the
    /// `default` ones on first use when configured to.
    pub(crate) async fn ensure_assets(
        &self,
        kernel: &str,
        image: &str,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        let auto = self.config().assets.auto_provision;
        match self.find_asset::<KernelRecord>(kernel).await {
            Ok(_) => {}
            Err(CoreError::AssetNotFound { .. }) if kernel == DEFAULT_ASSET && auto => {
                progress.stage(
                    "provision",
                    "no default kernel yet: building it from Debian's package",
                );
                let req = KernelAddRequest {
                    name: DEFAULT_ASSET.into(),
                    package: None,
                };
                match self.kernel_add(req, progress).await {
                    Ok(_) | Err(CoreError::AssetNameTaken { .. }) => {}
                    Err(e) => {
                        return Err(first_use_failed(
                            "kernel",
                            &format!(
                                "it is fetched with apt-get from the host's apt sources: check that they are reachable, or import one with `banger kernel import {DEFAULT_ASSET} --vmlinux FILE [--initrd FILE]`"
                            ),
                            e,
                        ));
                    }
                }
            }
            Err(e) => return Err(e),
        }
        match self.find_asset::<ImageRecord>(image).await {
            Ok(_) => Ok(()),
            Err(CoreError::AssetNotFound { .. }) if image == DEFAULT_ASSET && auto => {
                progress.stage(
                    "provision",
                    "no default image yet: building it with debootstrap",
                );
                let req = ImageBuildRequest {
                    name: DEFAULT_ASSET.into(),
                    ..ImageBuildRequest::default()
                };
                match self.image_build(req, progress).await {
                    Ok(_) | Err(CoreError::AssetNameTaken { .. }) => Ok(()),
                    Err(e) => Err(first_use_failed(
                        "image",
                        &format!(
                            "it is built with debootstrap from {}: check that it is reachable (assets.debian_mirror), or import one with `banger image import {DEFAULT_ASSET} --rootfs FILE.ext4`",
                            self.config().assets.debian_mirror
                        ),
                        e,
                    )),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// A failed first-use build, with what the user can do about it. Refusals
/// that already say what to do (a lock, a shutdown) pass through.
fn first_use_failed(kind: &str, hint: &str, e: CoreError) -> CoreError {
    match e {
        e @ (CoreError::AssetBuild(_) | CoreError::Host(_)) => AssetBuildError::FirstUse {
            kind: kind.to_owned(),
            hint: hint.to_owned(),
            source: Box::new(e),
        }
        .into(),
        other => other,
    }
}
