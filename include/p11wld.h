/*
 * p11wld.h: the administrative extension of libp11wld.so.
 *
 * Reach it in one of two ways:
 *   - P11WLD_GetFunctionList(&list), exported by libp11wld.so;
 *   - C_GetInterface("p11wld", NULL, &iface, 0), whose pFunctionList points
 *     to the same P11WLD_FUNCTION_LIST.
 *
 * The types mirror PKCS#11 on LP64 and ILP32 Unix: a p11wld_ulong is a
 * CK_ULONG, a p11wld_rv is a CK_RV and every function returns a CKR_ code.
 * Every function except GetInfo needs the module to be initialized with
 * C_Initialize first and returns CKR_CRYPTOKI_NOT_INITIALIZED otherwise.
 * Lists follow the PKCS#11 two-call convention: pass a NULL buffer to read
 * the count, then a buffer of that many entries; a buffer that is too small
 * gives CKR_BUFFER_TOO_SMALL with the count needed.
 *
 * Text fields are NUL-terminated UTF-8, unlike PKCS#11's blank-padded ones.
 */
#ifndef P11WLD_H
#define P11WLD_H

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned long p11wld_ulong;
typedef unsigned long p11wld_rv;

#define P11WLD_INTERFACE_NAME "p11wld"
#define P11WLD_VERSION_MAJOR 1
#define P11WLD_VERSION_MINOR 0

/* Member states, as seen by the calling process. */
#define P11WLD_MEMBER_UP 0UL
#define P11WLD_MEMBER_DOWN 1UL

/* P11WLD_PHYSICAL_SLOT.flags */
#define P11WLD_SLOT_TOKEN_PRESENT 0x1UL
#define P11WLD_SLOT_TOKEN_INITIALIZED 0x2UL
#define P11WLD_SLOT_IN_WLD 0x4UL

/* P11WLD_PHYSICAL_SLOT.wld_slot_id when the slot belongs to no WLD slot. */
#define P11WLD_NO_WLD_SLOT (~0UL)

typedef struct P11WLD_VERSION {
    unsigned char major;
    unsigned char minor;
} P11WLD_VERSION;

/* One physical slot of one vendor module. */
typedef struct P11WLD_PHYSICAL_SLOT {
    /* Position: module order from the configuration, then each module's own
     * slot order, counting from 0. It shifts when a device drops out. */
    p11wld_ulong position;
    char module_name[64];
    /* The vendor module's own slot id. */
    p11wld_ulong vendor_slot_id;
    /* Token label and serial with the padding blanks removed; empty when no
     * token is present. An uninitialized token may have an empty serial. */
    char label[33];
    char serial[17];
    p11wld_ulong flags;
    p11wld_ulong wld_slot_id;
} P11WLD_PHYSICAL_SLOT;

/* One member token of one WLD slot. */
typedef struct P11WLD_MEMBER_STATUS {
    p11wld_ulong wld_slot_id;
    char module_name[64];
    p11wld_ulong vendor_slot_id;
    char label[33];
    char serial[17];
    p11wld_ulong state;
    /* Sessions this process has open on the member. */
    p11wld_ulong open_sessions;
    /* Sessions ever opened on the member by this process. */
    p11wld_ulong total_sessions;
    /* Calls to the member that failed with a device-level error. */
    p11wld_ulong failures;
    /* The CKR_ code of the last device-level failure, 0 if none. */
    p11wld_rv last_error;
} P11WLD_MEMBER_STATUS;

typedef struct P11WLD_FUNCTION_LIST {
    P11WLD_VERSION version;
    /* Fills in the version of the extension; works before C_Initialize. */
    p11wld_rv (*GetInfo)(P11WLD_VERSION *version);
    /* Lists every physical slot of every configured module. */
    p11wld_rv (*ListPhysicalSlots)(P11WLD_PHYSICAL_SLOT *slots,
                                   p11wld_ulong *count);
    /* Lists every member of every WLD slot with its health and load. */
    p11wld_rv (*GetMemberStatus)(P11WLD_MEMBER_STATUS *members,
                                 p11wld_ulong *count);
} P11WLD_FUNCTION_LIST;

/* Sets *list to the extension's function list. */
p11wld_rv P11WLD_GetFunctionList(P11WLD_FUNCTION_LIST **list);

#ifdef __cplusplus
}
#endif

#endif /* P11WLD_H */
