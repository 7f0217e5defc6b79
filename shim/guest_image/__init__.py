"""`graft guest build`: the guest kernel + initramfs, from Debian packages and PyPI wheels."""
from .builder import GuestImage, build_guest_image
from .config import default_output_dir
from .errors import GuestImageError

__all__ = ["GuestImage", "GuestImageError", "build_guest_image", "default_output_dir"]
