/* libxencall (xencall.h): hypercall-safe pages for kexec segment data
 * (docs/xen-kexec-contract.md §2.7: libxenctrl bounces only the segment array). */

void *xencall_alloc_buffer_pages(xencall_handle *xcall, size_t nr_pages);
void xencall_free_buffer_pages(xencall_handle *xcall, void *p, size_t nr_pages);
